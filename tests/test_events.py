"""Behaviour kinds (issue 16, part 1): the kinds cut beside the training windows, per-kind loss weights and
target kinds, the event embedding, and the EVENTS input through ONNX, onnxruntime, Triton gRPC and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionrec.data.dataset import DatasetArtifact
from fusionrec.model_repository import EVENTS, OnnxRanker, feeds, kind_ids
from fusionrec.train import TrainConfig, _next_item_loss, target_weights, training_arrays

MAX_LEN = 8


@pytest.fixture(scope="module")
def event_model(tiny_dataset, tmp_path_factory) -> Path:
    """An ID model that reads behaviour kinds, trained briefly on the tiny demo catalog."""
    from fusionrec.train import run as train

    out = tmp_path_factory.mktemp("events") / "model"
    return train(tiny_dataset, None, out, TrainConfig(model="id", use_events=True, dim=16, layers=1, heads=1, max_len=MAX_LEN,
                                                      epochs=2, device="cpu", event_weights={"purchase": 2.0}))


@pytest.fixture(scope="module")
def event_repo(event_model, tiny_dataset, tmp_path_factory) -> Path:
    from fusionrec.export import ExportConfig
    from fusionrec.export import run as export

    return export(event_model, tiny_dataset, tmp_path_factory.mktemp("events") / "repo", ExportConfig(k=10, query=False))


def test_kinds_are_cut_with_the_items():
    seqs = [np.arange(1, 13, dtype=np.int64), np.arange(20, 23, dtype=np.int64)]
    kinds = [s % 4 + 1 for s in seqs]  # a kind that names its item
    for windows, stride in (("all", None), ("all", 2), ("last", None)):
        X, Y, KX, KY = training_arrays(seqs, 5, windows, stride, kinds=kinds)
        X2, Y2 = training_arrays(seqs, 5, windows, stride)
        assert np.array_equal(X, X2) and np.array_equal(Y, Y2)  # the kinds do not change the windows
        assert np.array_equal(KX, np.where(X > 0, X % 4 + 1, 0)) and np.array_equal(KY, np.where(Y > 0, Y % 4 + 1, 0))


def test_dataset_kinds_line_up_with_sequences_and_histories(tiny_dataset):
    ds = DatasetArtifact(tiny_dataset)
    assert ds.event_kinds and set(ds.event_kinds) <= {"view", "play", "complete", "purchase"}
    ev = ds.events
    code = {k: i + 1 for i, k in enumerate(ds.event_kinds)}
    for seq, kinds, (_, g) in zip(ds.train_sequences(), ds.train_kind_sequences(ds.event_kinds),
                                  ev[ev["split"] == "train"].groupby("user_idx", sort=True)):
        assert np.array_equal(seq, g["item_idx"].to_numpy()) and np.array_equal(kinds, g["event"].map(code).to_numpy())
    cases, hist = ds.eval_cases("test", MAX_LEN)
    kinds = ds.history_kinds(cases, MAX_LEN, ds.event_kinds)
    assert kinds.shape == hist.shape and np.array_equal(kinds > 0, hist > 0)
    row = int(np.argmax((hist > 0).sum(1)))
    u, p = int(cases["user_idx"][row]), int(cases["seq_pos"][row])
    user = ev[ev["user_idx"] == u].sort_values("seq_pos")
    last = user[user["seq_pos"] < p].tail(int((hist[row] > 0).sum()))
    assert list(kinds[row][hist[row] > 0]) == [code[e] for e in last["event"]]
    # a vocabulary without a kind gives it id 0 (unknown)
    assert (ds.history_kinds(cases, MAX_LEN, ["view"]) <= 1).all()


def test_event_weights_and_target_events():
    kinds = ["view", "play", "purchase"]
    assert target_weights(kinds, TrainConfig()) is None
    assert target_weights(kinds, TrainConfig(event_weights={"purchase": 3.0, "view": 0.5})).tolist() == [1.0, 0.5, 1.0, 3.0]
    assert target_weights(kinds, TrainConfig(target_events=["purchase"])).tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="buy"):
        target_weights(kinds, TrainConfig(event_weights={"buy": 2.0}))
    with pytest.raises(ValueError, match="event_weights"):
        TrainConfig(event_weights={"view": -1.0})


def test_weighted_loss_is_the_mean_over_the_weighted_targets(tiny_dataset):
    from fusionrec.models.recommender import ModelSpec, Recommender

    torch.manual_seed(0)
    n = DatasetArtifact(tiny_dataset).n_items
    model = Recommender(ModelSpec(n_items=n, use_id_embedding=True, dim=8, layers=1, heads=1, max_len=4, dropout=0.0,
                                  event_kinds=["view", "buy"]), id_mask=torch.ones(n + 1, dtype=torch.bool)).eval()
    X = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    Y = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    E = torch.tensor([[0, 1, 2, 1], [2, 2, 1, 1]])
    cfg = TrainConfig(modality_dropout=0.0, id_dropout=0.0)
    items = torch.ones(n + 1, dtype=torch.bool)
    items[0] = False
    lst = torch.nonzero(items).flatten()
    plain = _next_item_loss(model, X, Y, cfg, items, lst, E)
    ones = _next_item_loss(model, X, Y, cfg, items, lst, E, torch.ones(2, 4))
    torch.testing.assert_close(plain, ones)  # weight 1 everywhere is the plain mean (float32 sums in another order)
    only = torch.zeros(2, 4)
    only[1, 2] = 5.0
    single = _next_item_loss(model, X, Y, cfg, items, lst, E, only)
    logits = model.score(model.user_states(X, model.item_tables()[0], E)[1, 2:3], model.item_tables()[1])
    ref = torch.nn.functional.cross_entropy(logits.masked_fill(~items.unsqueeze(0), -1e9), Y[1, 2:3])
    torch.testing.assert_close(single, ref)
    # the kinds are read: other kinds, other loss
    assert not torch.allclose(plain, _next_item_loss(model, X, Y, cfg, items, lst, torch.zeros_like(E)))


def test_trained_model_reads_kinds_and_unknown_kinds_add_nothing(event_model, tiny_dataset):
    from fusionrec.evaluate import evaluate
    from fusionrec.models.recommender import load_model

    model = load_model(event_model)
    ds = DatasetArtifact(tiny_dataset)
    assert model.event_kinds == ds.event_kinds
    metrics = json.loads((event_model / "metrics.json").read_text())["training"]
    assert metrics["event_kinds"] == ds.event_kinds and metrics["n_weighted_targets"] == metrics["n_train_targets"]
    cases, hist = ds.eval_cases("test", MAX_LEN)
    kinds = ds.history_kinds(cases, MAX_LEN, model.event_kinds)
    _, s_kinds = model.topk(hist, 10, events=kinds)
    _, s_none = model.topk(hist, 10)
    _, s_zero = model.topk(hist, 10, events=np.zeros_like(kinds))
    assert not np.allclose(s_kinds, s_none)
    np.testing.assert_array_equal(s_none, s_zero)  # kind 0 is the zero vector: bit-exact, same kernels and shapes
    # evaluation gives the model its cases' kinds
    res = evaluate(model, ds, "test", ks=(10,), k_max=10, max_len=MAX_LEN)
    from fusionrec.ranking import rank_cases

    top = rank_cases(model, hist, 10, exclude=ds.consumed_before(cases), events=kinds)
    assert np.array_equal(res.topk, top)


def test_drop_unknown_moves_kinds_with_their_items():
    from fusionrec.models.recommender import drop_unknown

    known = torch.tensor([False, True, False, True, True])
    h = torch.tensor([[0, 1, 2, 3], [2, 2, 4, 1]])
    e = torch.tensor([[0, 11, 12, 13], [21, 22, 23, 24]])
    h2, e2 = drop_unknown(h, known, e)
    assert h2.tolist() == [[0, 0, 1, 3], [0, 0, 4, 1]] and e2.tolist() == [[0, 0, 11, 13], [0, 0, 23, 24]]
    assert torch.equal(drop_unknown(h, known), h2)


def test_exported_graph_reads_kinds_like_pytorch(event_repo, event_model, tiny_dataset):
    from fusionrec.models.recommender import load_model

    report = json.loads((event_repo / "fusionrec" / "export_report.json").read_text())
    ds = DatasetArtifact(tiny_dataset)
    assert report["event_kinds"] == ds.event_kinds
    assert report["parity"]["passed"] and report["parity"]["event_kinds_checked"] > 0 and report["parity"]["invalid_row_guard_ok"]
    assert not (event_repo / "fusionrec_explain").exists()  # explanations do not cover kinds yet: not exported
    onnx = OnnxRanker(event_repo)
    assert onnx.event_kinds == ds.event_kinds
    cases, hist = ds.eval_cases("test", MAX_LEN)
    kinds = ds.history_kinds(cases, MAX_LEN, onnx.event_kinds)
    i_o, s_o = onnx.topk(hist, 10, events=kinds)
    i_p, s_p = load_model(event_model).topk(hist, 10, events=kinds)
    np.testing.assert_allclose(s_o, s_p, rtol=1e-4, atol=1e-4)  # ORT vs PyTorch float32 kernels
    # a kind id past the vocabulary reads as unknown (0); a negative one makes the row invalid, alone
    big = kinds.copy()
    big[big > 0] = 99
    np.testing.assert_allclose(onnx.topk(hist, 10, events=big)[1], onnx.topk(hist, 10)[1], rtol=1e-5, atol=1e-5)
    bad = kinds.copy()
    bad[0, -1] = -1
    i_b, s_b = onnx.session.run(["ITEM_IDX", "SCORE"], feeds(hist[:3], MAX_LEN, None, bad[:3]))
    assert (i_b[0] == -1).all() and np.isnan(s_b[0]).all() and (i_b[1:] >= 1).all()


def test_graph_of_a_model_without_kinds_ignores_them(tiny_dataset, tmp_path):
    from fusionrec.export import ExportConfig
    from fusionrec.export import run as export
    from fusionrec.train import run as train

    model = train(tiny_dataset, None, tmp_path / "m", TrainConfig(model="id", dim=16, layers=1, heads=1, max_len=MAX_LEN, epochs=1,
                                                                   device="cpu"))
    repo = export(model, tiny_dataset, tmp_path / "repo", ExportConfig(k=10, query=False, explain=False))
    onnx = OnnxRanker(repo)
    assert onnx.event_kinds == [] and EVENTS in {i.name for i in onnx.session.get_inputs()}
    _, hist = DatasetArtifact(tiny_dataset).eval_cases("test", MAX_LEN)
    ev = np.where(hist > 0, 2, 0)
    np.testing.assert_array_equal(onnx.topk(hist, 10, events=ev)[1], onnx.topk(hist, 10)[1])  # same graph path, same kernels


def test_ab_offline_gives_each_arm_its_kinds(event_model, tiny_dataset, tmp_path):
    from fusionrec.ab.config import ABConfig
    from fusionrec.ab.offline import arm_events, offline_compare
    from fusionrec.models.recommender import load_model
    from fusionrec.ranking import rank_cases
    from fusionrec.train import run as train

    plain = load_model(train(tiny_dataset, None, tmp_path / "plain", TrainConfig(model="id", dim=16, layers=1, heads=1,
                                                                                   max_len=MAX_LEN, epochs=1, device="cpu")))
    kinded = load_model(event_model)
    ds = DatasetArtifact(tiny_dataset)
    cfg = ABConfig()
    res = offline_compare(plain, kinded, ds, cfg)
    cases, hist = ds.eval_cases(cfg.split, MAX_LEN)
    assert arm_events(ds, cases, hist, plain) is None
    top = rank_cases(kinded, hist, res.topk_treatment.shape[1], exclude=ds.consumed_before(cases),
                     events=arm_events(ds, cases, hist, kinded))
    assert np.array_equal(res.topk_treatment, top)


def test_kind_names_to_ids():
    assert kind_ids(["play", None, "nope", "view"], ["view", "play"]).tolist() == [2, 0, 0, 1]


def test_kinds_over_triton_grpc_and_the_cli(event_repo, tiny_dataset):
    from typer.testing import CliRunner

    from fusionrec.cli import app
    from fusionrec.serving.client import RecommendClient
    from fusionrec.serving.server import free_ports, start_server

    ds = DatasetArtifact(tiny_dataset)
    cases, hist = ds.eval_cases("test", MAX_LEN)
    onnx = OnnxRanker(event_repo)
    kinds = ds.history_kinds(cases, MAX_LEN, onnx.event_kinds)
    row = int(np.argmax((hist > 0).sum(1)))
    ids = onnx.item_ids
    history = [ids[i] for i in hist[row][hist[row] > 0]]
    names = [onnx.event_kinds[k - 1] for k in kinds[row][hist[row] > 0]]
    g, h, m = free_ports(3)
    with start_server({"fusionrec": event_repo}, grpc_port=g, http_port=h, metrics_port=m) as srv:
        with RecommendClient(srv.grpc_url, repo=event_repo) as client:
            assert client.event_kinds == ds.event_kinds
            got = client.recommend(history, k=5, events=names)
            ref_i, ref_s = onnx.topk(hist[row: row + 1], 5, events=kinds[row: row + 1])
            assert [i for i, _ in got] == [ids[i] for i in ref_i[0]]
            np.testing.assert_allclose([s for _, s in got], ref_s[0], rtol=1e-5, atol=1e-5)  # Triton's ORT vs in-process ORT
            # left out, the server fills "unknown" for every position
            plain = client.recommend(history, k=5)
            np.testing.assert_allclose([s for _, s in plain], onnx.topk(hist[row: row + 1], 5)[1][0], rtol=1e-5, atol=1e-5)
            with pytest.raises(ValueError, match="unknown behaviour kind"):
                client.recommend(history, k=5, events=["teleport"] * len(history))
            with pytest.raises(ValueError, match="one behaviour kind per history item"):
                client.recommend(history, k=5, events=names[:-1])
        base = ["recommend", "--user-history", ",".join(history), "-k", "5", "--url", srv.grpc_url, "--repo", str(event_repo)]
        res = CliRunner().invoke(app, [*base, "--events", ",".join(names)])
        assert res.exit_code == 0, res.output
        assert [ln.split()[1] for ln in res.stdout.strip().splitlines()] == [i for i, _ in got]
        bad = CliRunner().invoke(app, [*base, "--events", "teleport"])
        assert bad.exit_code == 2 and "one behaviour kind per history item" in bad.output
