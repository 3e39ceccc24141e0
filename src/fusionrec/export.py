"""Export step: the serving graph to ONNX, parity against PyTorch, and a Triton model repository.

The exported graph maps ``HISTORY`` int64 [batch, L] (item_idx, left-padded with 0) to
``ITEM_IDX`` int64 [batch, K] and ``SCORE`` float32 [batch, K]: user Transformer, the item
table baked in, scoring, history exclusion and top-K all inside the graph. It is wrapped in a
guard so that a row holding an id outside ``[0, n_items]`` never crashes a batch: that row
comes back with ``ITEM_IDX == -1`` and ``SCORE == NaN`` (a per-row status, because Triton can
only fail a whole dynamic batch, see docs/serving.md) while the other rows are unaffected.

The export fails loudly (``ExportError``, no artifact written) unless onnxruntime and PyTorch
agree on every test case of the dataset: the same top-K set, order differing only between
items whose scores are within ``tie_tolerance``, and max |score diff| <= ``score_tolerance``.

This module writes ``config.pbtxt`` as text and imports nothing from Triton; the CLI validates
the file with ``tritonclient``'s protobuf schema (``fusionrec.serving.config.validate``).

Example:
    >>> from fusionrec.export import ExportConfig, run
    >>> repo = run(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/repo"),
    ...            ExportConfig(name="fusionrec", k=100))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fusionrec.artifacts import StepError, artifact_dir, atomic_write_json, atomic_write_text, check_output, read_json, write_manifest
from fusionrec.config import StepConfig
from fusionrec.progress import get_logger, progress

log = get_logger("fusionrec.export")

INPUT_NAME = "HISTORY"
OUTPUT_IDX = "ITEM_IDX"
OUTPUT_SCORE = "SCORE"
INVALID_IDX = -1  # ITEM_IDX of a row whose history holds an id outside [0, n_items]


class ExportError(StepError):
    """The export failed a check (ONNX checker, parity): no model repository was written."""


class ExportConfig(StepConfig):
    """Settings of the export step (config section ``export``)."""

    name: str = "fusionrec"
    """Model name in the Triton repository (folder name and ``name:`` in config.pbtxt)."""
    k: int = Field(100, ge=1)
    """Top-K computed in the graph (clamped to the number of items)."""
    max_len: int | None = Field(None, ge=1)
    """History length L of the graph; default: the model's ``max_len``."""
    max_batch_size: int = Field(64, ge=1)
    max_queue_delay_microseconds: int = Field(2000, ge=0)
    preferred_batch_size: list[int] = [16, 32, 64]
    instance_kind: Literal["KIND_GPU", "KIND_CPU"] = "KIND_GPU"
    """Production default is GPU; use KIND_CPU for a CPU-only Triton."""
    instance_count: int = Field(1, ge=1)
    accelerator: Literal["none", "tensorrt"] = "none"
    """``tensorrt``: add ``gpu_execution_accelerator [{name: "tensorrt"}]`` (GPU instances only)."""
    tensorrt_fp16: bool = False
    opset: int = 18
    dynamo: bool = True
    """Use the torch.export-based exporter; on failure fall back to the legacy one (reason recorded)."""
    allow_legacy_fallback: bool = True
    score_tolerance: float = 1e-4
    tie_tolerance: float = 1e-5
    parity_batch: int = 256
    popular_k: int = 100
    """Length of the popularity fallback list (``popular.json``)."""


# -- the guarded serving graph -----------------------------------------------------------------
def guarded(module, n_items: int):
    """Wrap a serving module so rows with ids outside [0, n_items] return ITEM_IDX -1 / SCORE NaN.

    Example:
        >>> g = guarded(model.serving_module(10), model.n_items)            # doctest: +SKIP
    """
    import torch
    from torch import nn

    class GuardedServing(nn.Module):
        def __init__(self, inner: nn.Module, n: int):
            super().__init__()
            self.inner = inner
            self.n_items = int(n)

        def forward(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            bad = ((history < 0) | (history > self.n_items)).any(dim=1, keepdim=True)
            safe = torch.where(bad, torch.zeros_like(history), history)
            idx, score = self.inner(safe)
            idx = torch.where(bad, torch.full_like(idx, INVALID_IDX), idx)
            score = torch.where(bad, torch.full_like(score, float("nan")), score)
            return idx, score

    return GuardedServing(module, n_items).eval()


def export_onnx(module, max_len: int, path: Path, opset: int = 18, dynamo: bool = True,
                allow_legacy_fallback: bool = True) -> dict[str, Any]:
    """``torch.onnx.export`` a ``history -> (item_idx, score)`` module with a dynamic batch axis.

    Returns a dict describing how it was exported (exporter used, fallback reason, seconds).
    """
    import onnx
    import torch

    module = module.eval().cpu()
    example = torch.zeros(4, max_len, dtype=torch.long)
    example[:, -1] = 1
    example[1:, -2] = 2
    info: dict[str, Any] = {"opset": opset, "exporter": "dynamo" if dynamo else "legacy", "fallback_reason": None}
    t0 = time.perf_counter()

    def _legacy() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_IDX, OUTPUT_SCORE], opset_version=min(opset, 20),
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_IDX: {0: "batch"}, OUTPUT_SCORE: {0: "batch"}},
                              dynamo=False, external_data=False)

    with torch.no_grad():
        if dynamo:
            try:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prog = torch.onnx.export(module, (example,), input_names=[INPUT_NAME],
                                             output_names=[OUTPUT_IDX, OUTPUT_SCORE], opset_version=opset,
                                             dynamo=True, dynamic_shapes=({0: batch},), optimize=True,
                                             verbose=False)
                prog.save(str(path), external_data=False)
            except Exception as exc:  # noqa: BLE001 - recorded, then either re-raised or fallen back from
                if not allow_legacy_fallback:
                    raise ExportError(f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: {exc}") from exc
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                log.warning("dynamo exporter failed (%s); falling back to the legacy exporter", reason)
                info.update(exporter="legacy", fallback_reason=reason)
                _legacy()
        else:
            _legacy()
    info["seconds"] = round(time.perf_counter() - t0, 3)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnx.checker rejected {path}: {exc}") from exc
    m = onnx.load(str(path), load_external_data=False)
    ins = {i.name: i for i in m.graph.input}
    outs = {o.name: o for o in m.graph.output}
    if set(ins) != {INPUT_NAME} or set(outs) != {OUTPUT_IDX, OUTPUT_SCORE}:
        raise ExportError(f"exported graph has inputs {sorted(ins)} and outputs {sorted(outs)}; "
                          f"expected {INPUT_NAME} -> {OUTPUT_IDX}, {OUTPUT_SCORE}")
    info["ir_version"] = int(m.ir_version)
    info["opset_imports"] = {o.domain or "ai.onnx": int(o.version) for o in m.opset_import}
    return info


# -- parity ------------------------------------------------------------------------------------
def _cuda_usable() -> bool:
    """A CUDA device is really there (onnxruntime-gpu lists its CUDA EP even without a driver)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def ort_session(path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session on the CUDA EP when usable, else CPU (check ``get_providers()[0]``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if providers is None:
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_usable():
            providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def compare_topk(ref_idx: np.ndarray, ref_score: np.ndarray, idx: np.ndarray, score: np.ndarray,
                 score_tolerance: float = 1e-4, tie_tolerance: float = 1e-5) -> dict[str, Any]:
    """Compare two top-K results row by row (reference = PyTorch).

    A row passes when both lists hold the same items (a swap at the K-th boundary is allowed only
    between items whose reference scores are within ``tie_tolerance`` of the K-th score), every
    position's item has a reference score within ``tie_tolerance`` of the reference score at that
    position (so only near-ties reorder), and every common item's score differs by at most
    ``score_tolerance``.
    """
    n, k = ref_idx.shape
    failures: list[dict[str, Any]] = []
    reordered = boundary = 0
    max_diff = 0.0
    for r in range(n):
        ri, rs, oi, os_ = ref_idx[r], ref_score[r], idx[r], score[r]
        ref_map = dict(zip(ri.tolist(), rs.tolist()))
        common = [j for j, it in enumerate(oi.tolist()) if it in ref_map]
        diffs = np.abs(np.array([os_[j] - ref_map[oi[j]] for j in common], dtype=np.float64)) if common else np.zeros(0)
        if not np.all(np.isfinite(os_)) or not np.all(np.isfinite(rs)):
            failures.append({"row": r, "why": "non-finite score"})
            continue
        row_max = float(diffs.max()) if len(diffs) else 0.0
        max_diff = max(max_diff, row_max)
        missing = set(oi.tolist()) - set(ref_map)
        if missing:
            kth = float(rs[-1])
            if all(abs(float(os_[j]) - kth) <= tie_tolerance + score_tolerance for j, it in enumerate(oi.tolist()) if it in missing):
                boundary += 1
            else:
                failures.append({"row": r, "why": f"different top-{k} set", "only_onnx": sorted(int(x) for x in missing)[:10]})
                continue
        if not np.array_equal(ri, oi):
            reordered += 1
            bad_rank = next((j for j, it in enumerate(oi.tolist())
                             if it in ref_map and abs(ref_map[it] - float(rs[j])) > tie_tolerance), None)
            if bad_rank is not None:
                j = bad_rank
                failures.append({"row": r, "why": f"rank {j} holds item {int(oi[j])} (ref score {ref_map[int(oi[j])]:.6g}) "
                                                  f"where the reference has {int(ri[j])} ({float(rs[j]):.6g})"})
                continue
        if row_max > score_tolerance:
            failures.append({"row": r, "why": f"score diff {row_max:.3g} > {score_tolerance}"})
    return {"n_cases": int(n), "k": int(k), "max_abs_score_diff": max_diff, "reordered_cases": reordered,
            "boundary_tie_cases": boundary, "n_failures": len(failures), "failures": failures[:20]}


def check_parity(module, onnx_path: Path, histories: np.ndarray, n_items: int, cfg: ExportConfig) -> dict[str, Any]:
    """Run PyTorch and onnxruntime on every history; return the parity report (raises nothing)."""
    import torch

    sess = ort_session(onnx_path)
    ref_i, ref_s, ort_i, ort_s = [], [], [], []
    t_torch = t_ort = 0.0
    batches = range(0, len(histories), cfg.parity_batch)
    with torch.no_grad():
        for s in progress(batches, desc="parity", unit="batch"):
            h = np.ascontiguousarray(histories[s: s + cfg.parity_batch], dtype=np.int64)
            t0 = time.perf_counter()
            i, sc = module(torch.from_numpy(h))
            t_torch += time.perf_counter() - t0
            ref_i.append(i.numpy())
            ref_s.append(sc.numpy())
            t0 = time.perf_counter()
            oi, os_ = sess.run([OUTPUT_IDX, OUTPUT_SCORE], {INPUT_NAME: h})
            t_ort += time.perf_counter() - t0
            ort_i.append(oi)
            ort_s.append(os_)
    report = compare_topk(np.concatenate(ref_i), np.concatenate(ref_s), np.concatenate(ort_i), np.concatenate(ort_s),
                          cfg.score_tolerance, cfg.tie_tolerance)
    report.update(torch_seconds=round(t_torch, 4), onnxruntime_seconds=round(t_ort, 4),
                  provider=sess.get_providers()[0], score_tolerance=cfg.score_tolerance, tie_tolerance=cfg.tie_tolerance)

    # The guard: an out-of-range row gets the -1/NaN status, its neighbours are untouched.
    L = histories.shape[1]
    probe = np.zeros((3, L), dtype=np.int64)
    probe[0, -1] = 1
    probe[1, -1] = n_items + 1
    probe[2, -1] = -5
    gi, gs = sess.run([OUTPUT_IDX, OUTPUT_SCORE], {INPUT_NAME: probe})
    good_i, _ = sess.run([OUTPUT_IDX, OUTPUT_SCORE], {INPUT_NAME: probe[:1]})
    guard_ok = bool(np.all(gi[1:] == INVALID_IDX) and np.all(np.isnan(gs[1:])) and np.array_equal(gi[0], good_i[0]))
    report["invalid_row_guard_ok"] = guard_ok
    if not guard_ok:
        report["n_failures"] += 1
        report["failures"].append({"row": None, "why": "out-of-range rows did not come back as ITEM_IDX -1 / SCORE NaN"})
    report["passed"] = report["n_failures"] == 0
    return report


# -- Triton files ------------------------------------------------------------------------------
def config_pbtxt(cfg: ExportConfig, max_len: int, k: int) -> str:
    """The Triton ``config.pbtxt`` (onnxruntime backend) for the exported graph, as text."""
    pref = sorted({b for b in cfg.preferred_batch_size if 0 < b <= cfg.max_batch_size})
    lines = [
        f'name: "{cfg.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {cfg.max_batch_size}",
        "input [",
        f'  {{ name: "{INPUT_NAME}", data_type: TYPE_INT64, dims: [ {max_len} ] }}',
        "]",
        "output [",
        f'  {{ name: "{OUTPUT_IDX}", data_type: TYPE_INT64, dims: [ {k} ] }},',
        f'  {{ name: "{OUTPUT_SCORE}", data_type: TYPE_FP32, dims: [ {k} ] }}',
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}",
    ]
    if pref:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in pref)} ]")
    lines += ["}", f"instance_group [ {{ count: {cfg.instance_count}, kind: {cfg.instance_kind} }} ]"]
    if cfg.accelerator == "tensorrt" and cfg.instance_kind == "KIND_GPU":
        params = ['precision_mode', "FP16" if cfg.tensorrt_fp16 else "FP32"]
        lines += [
            "optimization { execution_accelerators {",
            "  gpu_execution_accelerator [ {",
            '    name: "tensorrt"',
            f'    parameters {{ key: "{params[0]}" value: "{params[1]}" }}',
            "  } ]",
            "} }",
        ]
    # Batch dimension: with max_batch_size > 0 Triton prepends the -1 batch axis to every dims.
    return "\n".join(lines) + "\n"


def popular_items(dataset, n: int) -> dict[str, Any]:
    """Most frequent train items (the cold-user fallback): ``{"item_idx", "item_id", "count"}``."""
    train = dataset.events[dataset.events["split"] == "train"]
    counts = Counter(train["item_idx"].astype(np.int64).tolist())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    ids = dataset.item_ids
    return {"item_idx": [int(i) for i, _ in top], "item_id": [str(ids[i]) for i, _ in top],
            "count": [int(c) for _, c in top], "source": "train events"}


def export_module(module, n_items: int, max_len: int, item_ids: list[str], dataset: Path | None, out: Path,
                  cfg: ExportConfig, inputs: dict[str, Path] | None = None, extra_manifest: dict | None = None,
                  k: int | None = None, histories: np.ndarray | None = None, popular: dict | None = None,
                  force: bool = False) -> Path:
    """Export any ``history -> (item_idx, score)`` module into a Triton model repository at ``out``.

    ``module`` must already compute top-``k`` (``k`` defaults to ``cfg.k`` clamped to ``n_items``);
    ``item_ids[i]`` is the external id of item_idx ``i`` (index 0 = padding ``""``). Parity runs
    on every test case of ``dataset`` (or on ``histories`` when no dataset is given, e.g. benchmarks).
    """
    from fusionrec.data.dataset import DatasetArtifact

    sources = [dataset, *(inputs or {}).values()]
    check_output(out, "model_repository", sources, force)
    if len(item_ids) != n_items + 1:
        raise ValueError(f"item_ids has {len(item_ids)} entries, expected n_items + 1 = {n_items + 1}")
    k = int(k if k is not None else min(cfg.k, n_items))
    ds = DatasetArtifact(dataset) if dataset is not None else None
    if histories is None:
        if ds is None:
            raise ValueError("export_module needs a dataset or parity histories")
        _, histories = ds.eval_cases("test", max_len)
    if popular is None:
        if ds is None:
            raise ValueError("export_module needs a dataset or a popular list")
        popular = popular_items(ds, cfg.popular_k)
    if len(histories) == 0:
        raise ExportError(f"{dataset} has no test cases: parity needs at least one")
    g = guarded(module, n_items)
    with artifact_dir(out, "model_repository", sources, force) as tmp:
        mdir = tmp / cfg.name
        (mdir / "1").mkdir(parents=True)
        onnx_path = mdir / "1" / "model.onnx"
        log.info("exporting %s (L=%d, K=%d, %d items) to ONNX", cfg.name, max_len, k, n_items)
        info = export_onnx(g, max_len, onnx_path, cfg.opset, cfg.dynamo, cfg.allow_legacy_fallback)
        log.info("parity check on %d test cases", len(histories))
        parity = check_parity(g, onnx_path, histories, n_items, cfg)
        report = {"export": info, "parity": parity, "n_items": n_items, "max_len": max_len, "k": k,
                  "inputs": {INPUT_NAME: ["batch", max_len], "dtype": "int64"},
                  "outputs": {OUTPUT_IDX: ["batch", k], OUTPUT_SCORE: ["batch", k]}}
        if not parity["passed"]:
            raise ExportError(
                f"ONNX/PyTorch parity failed on {parity['n_failures']} of {parity['n_cases']} test cases "
                f"(max |score diff| {parity['max_abs_score_diff']:.3g}, tolerance {cfg.score_tolerance}); "
                f"first: {json.dumps(parity['failures'][:3])}. No model repository written.")
        atomic_write_text(mdir / "config.pbtxt", config_pbtxt(cfg, max_len, k))
        atomic_write_json(mdir / "item_ids.json", list(item_ids))
        atomic_write_json(mdir / "popular.json", popular)
        atomic_write_json(mdir / "export_report.json", report)
        write_manifest(tmp, step="export", params=cfg, inputs={**({"dataset": dataset} if dataset else {}), **(inputs or {})},
                       kind="model_repository", models=[cfg.name], n_items=n_items, max_len=max_len, k=k,
                       **(extra_manifest or {}))
    log.info("model repository written to %s (parity: %d cases, max diff %.2g, %d reordered)",
             out, parity["n_cases"], parity["max_abs_score_diff"], parity["reordered_cases"])
    return out


def run(model: Path, dataset: Path, out: Path, cfg: ExportConfig, force: bool = False) -> Path:
    """Export a trained model artifact into a Triton model repository (see module docstring)."""
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models import load_model

    check_output(out, "model_repository", [model, dataset], force)
    m = load_model(model, device="cpu")
    max_len = int(cfg.max_len or m.spec.max_len)
    ids = [str(x) for x in DatasetArtifact(dataset).item_ids.tolist()]
    if len(ids) != m.n_items + 1:
        raise ValueError(f"model {model} has {m.n_items} items but dataset {dataset} has {len(ids) - 1}: "
                         "export the model with the dataset it was trained on")
    k = min(cfg.k, m.n_items)
    return export_module(m.serving_module(k), m.n_items, max_len, ids, dataset, out, cfg,
                         inputs={"model": model}, k=k, force=force)


def read_repository(repo: str | os.PathLike, name: str | None = None) -> tuple[Path, dict]:
    """Locate a model folder in a repository: ``(model_dir, info)``; ``repo`` may be the model folder itself."""
    repo = Path(repo)
    if (repo / "config.pbtxt").exists():
        mdir = repo
    else:
        manifest = read_json(repo / "manifest.json") if (repo / "manifest.json").exists() else {}
        names = [name] if name else manifest.get("models") or sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
        if not names:
            raise FileNotFoundError(f"{repo} holds no model (no <name>/config.pbtxt): is it a model repository from `fusionrec export`?")
        mdir = repo / names[0]
        if not (mdir / "config.pbtxt").exists():
            raise FileNotFoundError(f"{mdir / 'config.pbtxt'} not found in model repository {repo}")
    report = read_json(mdir / "export_report.json") if (mdir / "export_report.json").exists() else {}
    return mdir, {"name": mdir.name, "max_len": report.get("max_len"), "k": report.get("k"), "n_items": report.get("n_items")}


# -- cold-start items: re-encode, align, append, re-export (no retraining) ---------------------
def _read_new_items(source: Path) -> tuple[Any, Path]:
    """New items as a DataFrame plus the folder their media paths are relative to."""
    import pandas as pd

    from fusionrec.data.dataset import DatasetArtifact

    source = Path(source)
    if source.is_dir() and (source / "manifest.json").exists():
        return DatasetArtifact(source).items.copy(), source
    if source.is_dir():
        for name in ("items.parquet", "items.csv"):
            if (source / name).exists():
                return _read_new_items(source / name)
        raise FileNotFoundError(f"{source}: no items.csv / items.parquet (or dataset artifact) with the new items")
    if not source.exists():
        raise FileNotFoundError(f"new items file not found: {source}")
    if source.suffix == ".parquet":
        return pd.read_parquet(source), source.parent
    if source.suffix == ".csv":
        return pd.read_csv(source, dtype={"item_id": str}), source.parent
    raise ValueError(f"{source}: new items must be a .csv or .parquet file, a raw dataset folder or a dataset artifact")


def _combined_dataset(ds, new, base: Path, out: Path) -> tuple[list[str], int]:
    """Write a dataset artifact of the old items followed by the new ones (item_idx n+1..); media paths absolute."""
    import pandas as pd

    from fusionrec.artifacts import save_parquet

    if "item_id" not in new.columns:
        raise ValueError(f"new items have no 'item_id' column (columns: {list(new.columns)})")
    new = new.drop(columns=[c for c in ("item_idx", "cold") if c in new.columns]).copy()
    new["item_id"] = new["item_id"].astype(str)
    dup = new["item_id"][new["item_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"new items repeat item_id(s) {dup[:10]}")
    clash = sorted(set(new["item_id"]) & set(ds.items["item_id"].astype(str)))
    if clash:
        raise ValueError(f"new item id(s) already in the catalog: {clash[:10]} (re-exporting an existing item needs retraining)")
    old = ds.items.copy()
    n = len(old)
    for col in ("image", "audio"):
        if col in old.columns:
            old[col] = [str(ds.path / p) if isinstance(p, str) and p else None for p in old[col]]
        if col in new.columns:
            paths, status = [], []
            for p in new[col]:
                if not isinstance(p, str) or not p:
                    paths.append(None)
                    status.append("absent")
                else:
                    full = (base / p) if not Path(p).is_absolute() else Path(p)
                    paths.append(str(full))
                    status.append("ok" if full.is_file() else "missing")
            new[col], new[f"{col}_status"] = paths, status
    new["item_idx"] = np.arange(n + 1, n + 1 + len(new), dtype=np.int64)
    new["cold"] = True
    both = pd.concat([old, new[[c for c in new.columns if c in old.columns or c in ("item_idx", "item_id")]]],
                     ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    save_parquet(both, out / "items.parquet")
    save_parquet(ds.users, out / "users.parquet")
    atomic_write_json(out / "meta.json", ds.meta)
    atomic_write_json(out / "stats.json", {"n_items": len(both), "note": "items only: for encoding new items"})
    write_manifest(out, step="export", kind="dataset", inputs={"dataset": ds.path}, purpose="encode new items")
    return new["item_id"].tolist(), n


def encode_new_items(model, dataset: Path, aligned: Path, new_items: Path, work: Path) -> tuple[list[str], dict, dict, dict]:
    """Encode new items with the encoders the model's aligned artifact was built from, and project them.

    Old and new items are encoded together (the content-hash cache makes old ones free; fittable
    encoders such as tabular standardization see the whole catalog), then the new rows are
    projected with the saved alignment heads (``fusionrec.models.align.project``).
    Returns ``(new_ids, features, masks, provenance)``.
    """
    from fusionrec.artifacts import load_npy, read_manifest
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import project

    ds = DatasetArtifact(dataset)
    new_df, base = _read_new_items(Path(new_items))
    comb = work / "combined_dataset"
    new_ids, n = _combined_dataset(ds, new_df, base, comb)
    m = len(new_ids)
    amanifest = read_manifest(aligned, kind="aligned")
    sources = {}
    for role, inp in amanifest.get("inputs", {}).items():
        if role.startswith("embeddings"):
            p = Path(inp["path"])
            if (p / "manifest.json").exists():
                em = read_manifest(p)
                sources[em.get("modality") or em["params"].get("modality")] = (p, em)
    features, masks, prov = {}, {}, {}
    for mod in model.spec.modalities:
        if mod not in sources:
            raise FileNotFoundError(f"the embeddings artifact of modality '{mod}' named in {aligned}/manifest.json is gone: "
                                    "new items must be encoded with the same encoder settings")
        path, em = sources[mod]
        params = {k: v for k, v in em["params"].items() if k in EncodeConfig.model_fields}
        params.update(shard=0, num_shards=1)
        out = encode(comb, work / f"emb_{mod}", EncodeConfig(**params))
        emb, mask = load_npy(out / "embeddings.npy"), load_npy(out / "mask.npy").astype(bool)
        raw, mk = emb[n + 1: n + 1 + m], mask[n + 1: n + 1 + m]
        features[mod] = project(aligned, mod, raw) * mk[:, None]
        masks[mod] = mk
        prov[mod] = {"encoder": em.get("encoder"), "present": int(mk.sum()), "of": m}
        log.info("new items, %s: %d of %d encoded", mod, int(mk.sum()), m)
    return new_ids, features, masks, prov


def run_with_new_items(model: Path, dataset: Path, aligned: Path, new_items: Path, out: Path, cfg: ExportConfig,
                       force: bool = False) -> Path:
    """Export ``model`` with new (cold-start) items appended to its item table, without retraining.

    New items get item_idx ``n_items+1..``; ``item_ids.json`` lists them; parity runs as usual.

    Example:
        >>> run_with_new_items(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/aligned"),
        ...                    Path("new_items.csv"), Path("artifacts/repo"), ExportConfig())   # doctest: +SKIP
    """
    import tempfile

    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models import load_model

    check_output(out, "model_repository", [model, dataset, aligned, new_items], force)
    m = load_model(model, device="cpu")
    if not getattr(m.spec, "modalities", None):
        raise ValueError(f"model {model} uses no content modality (ID-only or popularity): it cannot score new items "
                         "without retraining")
    ids = [str(x) for x in DatasetArtifact(dataset).item_ids.tolist()]
    if len(ids) != m.n_items + 1:
        raise ValueError(f"model {model} has {m.n_items} items but dataset {dataset} has {len(ids) - 1}")
    with tempfile.TemporaryDirectory(prefix=".add-items-", dir=Path(out).parent if Path(out).parent.exists() else None) as work:
        new_ids, feats, masks, prov = encode_new_items(m, dataset, aligned, new_items, Path(work))
    m2 = m.with_new_items(feats, masks)
    max_len = int(cfg.max_len or m.spec.max_len)
    k = min(cfg.k, m2.n_items)
    return export_module(m2.serving_module(k), m2.n_items, max_len, ids + new_ids, dataset, out, cfg,
                         inputs={"model": model, "aligned": aligned, "new_items": Path(new_items)}, k=k,
                         extra_manifest={"added_items": {"n": len(new_ids), "first_item_idx": len(ids), "modalities": prov}},
                         force=force)
