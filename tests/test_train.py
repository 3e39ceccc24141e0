"""Align + train + evaluate on tiny data: loss goes down, determinism, artifacts, CLI, the real ingest output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fusionrec.artifacts import read_manifest

FAST = dict(dim=16, layers=1, heads=2, max_len=10, batch_size=16, device="cpu", patience=100)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from synth_rec import make_dataset, make_embeddings

    from fusionrec.models.align import AlignConfig, run

    root = tmp_path_factory.mktemp("synth")
    ds = make_dataset(root / "ds", n_items=48, n_users=40, events=12)
    embs = make_embeddings(ds, root / "emb")
    aligned = run(ds, embs, root / "aligned", AlignConfig(dim=16, hidden=32, epochs=15, batch_size=32, device="cpu"))
    return ds, embs, aligned


def test_align_artifact_and_retrieval_improves(synth):
    from fusionrec.models.align import project

    ds, embs, aligned = synth
    m = read_manifest(aligned, kind="aligned")
    assert m["modalities"] == ["image", "text"] and m["dim"] == 16
    text = np.load(aligned / "text.npy")
    tmask = np.load(aligned / "text_mask.npy")
    assert text.shape == (49, 16) and text.dtype == np.float32 and tmask.dtype == bool
    assert not tmask[0] and np.all(text[~tmask] == 0)
    assert np.allclose(np.linalg.norm(text[tmask], axis=1), 1.0, atol=1e-5)
    metrics = json.loads((aligned / "metrics.json").read_text())
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0]
    for pair in ("text->image", "image->text"):
        assert metrics["retrieval"]["after"][pair]["recall@10"] >= metrics["retrieval"]["before"][pair]["recall@10"]
        assert 0 <= metrics["retrieval"]["after"][pair]["recall@1"] <= 1
    # projecting the raw rows with the saved head reproduces the artifact
    raw = np.load(embs[0] / "embeddings.npy")  # make_embeddings writes text first
    assert np.allclose(project(aligned, "text", raw[tmask]), text[tmask], atol=1e-5)
    with pytest.raises(ValueError, match="no head"):
        project(aligned, "audio", raw[:2])


def test_alignment_retrieval_is_measured_on_items_held_out_of_the_fit(synth, tmp_path):
    """Issue 13 item 4. Old behaviour: retrieval was measured on the items the heads were fitted on. Now a seeded
    share is held out: changing those items' raw vectors changes nothing in the fitted heads, and the reported
    retrieval covers exactly them (the fitted items' figure is kept beside it)."""
    import shutil

    from safetensors.torch import load_file

    from fusionrec.models.align import AlignConfig, run

    ds, embs, aligned = synth
    metrics = json.loads((aligned / "metrics.json").read_text())
    held = metrics["retrieval"]["held_out_items"]
    assert metrics["retrieval"]["items"] == "held_out" and len(held) == metrics["retrieval"]["n_held_out"] == round(0.1 * 48)
    assert all(v["n"] <= len(held) for v in metrics["retrieval"]["after"].values())
    assert all(v["n"] >= 48 - len(held) - 6 for v in metrics["retrieval_fit"].values())  # 3 masked rows per modality
    # scramble the held-out items' raw vectors: the fitted heads must be bit-identical (same seed, same fit items)
    changed = []
    for e in embs:
        out = tmp_path / e.name
        shutil.copytree(e, out)
        emb = np.load(out / "embeddings.npy")
        emb[held] = np.random.default_rng(9).normal(0, 5, (len(held), emb.shape[1])).astype(np.float32) * (emb[held] != 0).any(1, keepdims=True)
        np.save(out / "embeddings.npy", emb)
        changed.append(out)
    cfg = AlignConfig(dim=16, hidden=32, epochs=15, batch_size=32, device="cpu")
    again = run(ds, changed, tmp_path / "aligned2", cfg)
    a, b = load_file(str(aligned / "projections.safetensors")), load_file(str(again / "projections.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _loss_on_batch(model, ds, cfg):
    from fusionrec.train import _loss, training_arrays

    X, Y = training_arrays(ds.train_sequences(), cfg.max_len)
    torch.manual_seed(123)
    train_items = model.id_mask.clone()
    with torch.no_grad():
        model.eval()
        return float(_loss(model, torch.from_numpy(X), torch.from_numpy(Y), cfg.model_copy(update={"modality_dropout": 0.0, "id_dropout": 0.0}),
                           train_items, torch.nonzero(train_items).flatten()))


@pytest.mark.parametrize("fusion,loss", [("attention", "full"), ("user_gate", "sampled")])
def test_training_lowers_loss(synth, fusion, loss):
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.align import load_aligned
    from fusionrec.models.recommender import Recommender
    from fusionrec.train import TrainConfig, build_spec, fit, seed_everything

    ds_path, _, aligned = synth
    ds = DatasetArtifact(ds_path)
    cfg = TrainConfig(fusion=fusion, loss=loss, n_negatives=16, epochs=6, lr=5e-3, **FAST)
    mods, feats, fmask = load_aligned(aligned)
    seed_everything(0)
    counts = np.bincount(ds.split("train")["item_idx"], minlength=ds.n_items + 1)
    model = Recommender(build_spec(cfg, ds.n_items, mods, feats.shape[2]), torch.from_numpy(feats), torch.from_numpy(fmask),
                        torch.from_numpy(counts > 0))
    before = _loss_on_batch(model, ds, cfg)
    record = fit(model, ds, cfg, "cpu")
    after = _loss_on_batch(model, ds, cfg)
    assert after < before - 0.05, (before, after)
    assert record["loss"][-1] < record["loss"][0]
    assert record["sequences_per_second"] > 0 and len(record["valid_ndcg@10"]) == record["epochs_run"]


def test_logit_adjustment_adds_log_train_counts_in_training_only(synth):
    """``logit_adjustment`` t: the training loss is the cross-entropy of score + t * log(train count) (checked against
    a hand computation on the same batch), and serving ranks by the score alone."""
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.align import load_aligned
    from fusionrec.models.recommender import Recommender
    from fusionrec.train import NEG, TrainConfig, _loss, build_spec, training_arrays

    ds_path, _, aligned = synth
    ds = DatasetArtifact(ds_path)
    cfg = TrainConfig(model="fused", modality_dropout=0.0, id_dropout=0.0, logit_adjustment=0.5, **FAST)
    mods, feats, fmask = load_aligned(aligned)
    torch.manual_seed(0)
    counts = np.bincount(ds.split("train")["item_idx"], minlength=ds.n_items + 1)
    model = Recommender(build_spec(cfg, ds.n_items, mods, feats.shape[2]), torch.from_numpy(feats), torch.from_numpy(fmask),
                        torch.from_numpy(counts > 0)).eval()
    X, Y = (torch.from_numpy(a) for a in training_arrays(ds.train_sequences(), cfg.max_len))
    target_counts = torch.bincount(Y[Y > 0], minlength=ds.n_items + 1).float()
    offset = 0.5 * torch.log(target_counts.clamp_min(1.0))
    train_items = model.id_mask.clone()
    with torch.no_grad():
        got = float(_loss(model, X, Y, cfg, train_items, torch.nonzero(train_items).flatten(), logit_offset=offset))
        plain = float(_loss(model, X, Y, cfg, train_items, torch.nonzero(train_items).flatten()))
        table, parts = model.item_tables()
        h = model.user_states(X, table)[Y > 0]
        logits = (h @ parts[0].t() + offset).masked_fill(~train_items.unsqueeze(0), NEG)
        want = float(torch.nn.functional.cross_entropy(logits, Y[Y > 0]))
    assert got == pytest.approx(want, rel=1e-5) and abs(got - plain) > 1e-3
    assert TrainConfig().logit_adjustment == 0.0  # off by default: the serving graph has no offset either way


def test_train_artifact_deterministic_and_reloadable(synth, tmp_path):
    from fusionrec.models import load_model
    from fusionrec.train import TrainConfig, run

    ds, _, aligned = synth
    cfg = TrainConfig(model="fused", fusion="attention", epochs=2, seed=3, **FAST)
    a = run(ds, aligned, tmp_path / "a", cfg)
    b = run(ds, aligned, tmp_path / "b", cfg)
    assert read_manifest(a, kind="model")["model"] == "fused"
    conf = json.loads((a / "config.json").read_text())
    assert conf["spec"]["n_items"] == 48 and conf["spec"]["modalities"] == ["image", "text"] and conf["fusion"] == "attention"
    from safetensors.torch import load_file

    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    # bit for bit is the promise here: same seed, same process, same batch shapes and thread count,
    # deterministic algorithms on (a run on another machine may differ by float noise)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    metrics = json.loads((a / "metrics.json").read_text())
    assert set(metrics["test"]) == {"overall", "warm", "cold"} and metrics["training"]["sequences_per_second"] > 0
    per_case = pd.read_parquet(a / "per_case.parquet")
    assert {"case_id", "user_idx", "item_idx", "segment", "rank", "recall@10", "ndcg@10", "mrr"} <= set(per_case.columns)
    assert per_case["ndcg@10"].mean() == pytest.approx(metrics["test"]["overall"]["ndcg@10"])
    # the reloaded model reproduces the stored test figures exactly
    from fusionrec.evaluate import evaluate

    res = evaluate(load_model(a), ds, "test", ks=(10, 20, 50), k_max=100, max_len=10)
    assert res.summary["overall"]["ndcg@10"] == pytest.approx(metrics["test"]["overall"]["ndcg@10"], abs=1e-12)
    # a different seed gives a different model
    c = run(ds, aligned, tmp_path / "c", cfg.model_copy(update={"seed": 4}))
    sc = load_file(str(c / "model.safetensors"))
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_id_count_gate_trains_its_bias_from_the_train_counts(synth, tmp_path):
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models import load_model
    from fusionrec.models.recommender import count_buckets
    from fusionrec.train import TrainConfig, run

    ds, _, aligned = synth
    out = run(ds, aligned, tmp_path / "gate", TrainConfig(model="fused", id_count_gate=True, epochs=2, seed=0, **FAST))
    model = load_model(out)
    assert model.spec.id_count_gate
    # the buckets are the dataset's train counts, and training moved the biases of the buckets that hold items
    counts = DatasetArtifact(ds).train_counts
    assert torch.equal(model.count_bucket, count_buckets(torch.from_numpy(counts)))
    used = torch.unique(model.count_bucket[model.id_mask])
    assert used.numel() >= 2 and (model.id_count_bias[used] != 0).all()


def test_baselines_by_the_same_code_path(synth, tmp_path):
    from fusionrec.models import load_model
    from fusionrec.train import TrainConfig, run

    ds, _, aligned = synth
    pop = run(ds, None, tmp_path / "pop", TrainConfig(model="popularity", **FAST))
    assert json.loads((pop / "metrics.json").read_text())["test"]["cold"]["ndcg@10"] == 0.0
    idm = run(ds, None, tmp_path / "id", TrainConfig(model="id", epochs=1, **FAST))
    assert load_model(idm).spec.modalities == []
    single = run(ds, aligned, tmp_path / "single", TrainConfig(model="single:text", epochs=1, **FAST))
    assert load_model(single).spec.modalities == ["text"]
    with pytest.raises(ValueError, match="no modality 'audio'"):
        run(ds, aligned, tmp_path / "x", TrainConfig(model="single:audio", epochs=1, **FAST))
    with pytest.raises(ValueError, match="needs an aligned artifact"):
        run(ds, None, tmp_path / "y", TrainConfig(model="fused", epochs=1, **FAST))


def test_cli_align_train_evaluate(synth, tmp_path):
    from typer.testing import CliRunner

    from fusionrec.cli import app

    ds, embs, _ = synth
    r = CliRunner()
    res = r.invoke(app, ["align", str(ds), str(tmp_path / "al"), "-e", str(embs[0]), "-e", str(embs[1]), "--dim", "16", "--epochs", "2",
                         "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "text->image" in res.output
    res = r.invoke(app, ["train", str(ds), str(tmp_path / "m"), "--aligned", str(tmp_path / "al"), "--model", "fused", "--fusion", "weighted",
                         "--epochs", "1", "--dim", "16", "--device", "cpu", "--set", "max_len=10", "--set", "layers=1"])
    assert res.exit_code == 0, res.output
    assert "sequences/s" in res.output and "| fused/weighted | cold |" in res.output
    res = r.invoke(app, ["evaluate", str(ds), str(tmp_path / "m"), str(tmp_path / "ev"), "--set", "max_len=10"])
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "ev", kind="evaluation") and (tmp_path / "ev" / "per_case.parquet").exists()
    res = r.invoke(app, ["train", str(ds), str(tmp_path / "bad"), "--model", "nonsense"])
    assert res.exit_code == 2 and "model must be" in res.output


def test_trains_on_the_real_ingest_output(tiny_dataset, tmp_path):
    """The ingest step's tiny demo artifact with stand-in embeddings in the encode layout: every piece fits."""
    from fusionrec.artifacts import artifact_dir, save_npy, write_manifest
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models import load_model
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig, run

    ds = DatasetArtifact(tiny_dataset)
    rng = np.random.default_rng(0)
    embs = []
    for modality, d in (("text", 12), ("tabular", 6)):
        e = rng.normal(size=(ds.n_items + 1, d)).astype(np.float32)
        mask = np.ones(ds.n_items + 1, bool)
        mask[0] = False
        e[0] = 0
        with artifact_dir(tmp_path / modality) as tmp:
            save_npy(tmp / "embeddings.npy", e)
            save_npy(tmp / "mask.npy", mask)
            write_manifest(tmp, step="encode", kind="embeddings", modality=modality, dim=d)
        embs.append(tmp_path / modality)
    aligned = align(tiny_dataset, embs, tmp_path / "al", AlignConfig(dim=8, hidden=16, epochs=2, device="cpu"))
    model = run(tiny_dataset, aligned, tmp_path / "m", TrainConfig(model="fused", epochs=2, **FAST))
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["test"]["overall"]["n"] == len(ds.split("test"))
    assert metrics["test"]["cold"]["n"] > 0
    m = load_model(model)
    assert m.n_items == ds.n_items
    cases, hist = ds.eval_cases("test", 10)
    idx, score = m.topk(hist, 5)
    assert np.isfinite(score).all() and not (idx[:, :, None] == hist[:, None, :]).any()


def test_short_training_and_alignment_log_no_progress_lines_without_a_terminal(synth, tmp_path, monkeypatch, caplog):
    """Without a terminal, progress is one line per interval: align and train loops shorter than it say nothing
    (a per-step postfix update once forced a log line per training step)."""
    import logging

    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig, run

    ds_path, embs, _ = synth
    monkeypatch.delenv("FUSIONREC_QUIET", raising=False)
    monkeypatch.setenv("FUSIONREC_PROGRESS_INTERVAL", "60")
    with caplog.at_level(logging.INFO, logger="fusionrec.progress"):
        aligned = align(ds_path, embs, tmp_path / "al", AlignConfig(dim=16, hidden=32, epochs=3, batch_size=32, device="cpu"))
        run(ds_path, aligned, tmp_path / "m", TrainConfig(model="fused", epochs=3, **FAST))
    assert (tmp_path / "m").is_dir()
    assert [r.getMessage() for r in caplog.records if r.name == "fusionrec.progress"] == []
