"""Export step: a trained model -> a Triton model repository, checked for parity with PyTorch.

Split by concern: the guarded serving graph and its ONNX export (``fusionrec.export.graph``),
parity against PyTorch (``fusionrec.export.parity``), the repository's files and reader
(``fusionrec.model_repository``, the owner of that artifact), and adding cold-start items
without retraining (``fusionrec.export.new_items``). This module is the step: settings, the
popularity fallback list, and writing one model folder atomically.

The export fails loudly (``ExportError``, no artifact written) unless onnxruntime and PyTorch
agree on every test case of the dataset (see ``fusionrec.export.parity``).

This package writes ``config.pbtxt`` as text and imports nothing from Triton; the CLI validates
the file with ``tritonclient``'s protobuf schema (``fusionrec.serving.config.validate``).

Example:
    >>> from fusionrec.export import ExportConfig, run
    >>> repo = run(Path("artifacts/model"), Path("artifacts/dataset"), Path("artifacts/repo"),
    ...            ExportConfig(name="fusionrec", k=100))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from fusionrec.artifacts import artifact_dir, check_output, write_manifest
from fusionrec.config import StepConfig
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.export.graph import ExportError, export_onnx, guarded
from fusionrec.export.parity import check_parity
from fusionrec.model_repository import model_folder, report_shapes, write_model_files
from fusionrec.models import load_model
from fusionrec.progress import get_logger
from fusionrec.query import DEFAULT_MODE, DEFAULT_POOL, Mode, Pool

log = get_logger("fusionrec.export")

__all__ = ["ExportConfig", "ExportError", "export_module", "popular_items", "run"]


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
    query: bool = True
    """Also write ``<name>_query`` (text query -> items) when the model has content modalities and the
    aligned artifact (``--aligned``) has text."""
    query_mode: Mode = DEFAULT_MODE
    """How a query enters the aligned space (``fusionrec.query.build_query_module``); ``head`` since the alignment
    keeps modality-specific content (benchmarks/query.py: on par on the demo, 0.78 vs 0.32 on MovieLens genres)."""
    query_neighbours: int = 20
    query_pool: Pool = DEFAULT_POOL
    explain: bool = True
    """Also write ``<name>_explain`` (history + recommended items -> explanations) for sequential models."""
    explain_k: int = 10
    """How many recommended items one explain request covers."""


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
                  companions=None, exclude: np.ndarray | None = None, force: bool = False,
                  event_kinds: list[str] | None = None) -> Path:
    """Export any ``history -> (item_idx, score)`` module into a Triton model repository at ``out``.

    ``module`` must already compute top-``k`` (``k`` defaults to ``cfg.k`` clamped to ``n_items``);
    ``item_ids[i]`` is the external id of item_idx ``i`` (index 0 = padding ``""``). Parity runs
    on every test case of ``dataset`` (or on ``histories`` when no dataset is given, e.g. benchmarks),
    each with its user's whole consumed set as the EXCLUDE input (``exclude``, or the dataset's).
    ``companions(tmp_repo, histories) -> {folder name: report}`` writes companion models (query,
    explain) into the repository being built, so they are part of the same atomic write.
    ``event_kinds``: the behaviour kinds the module reads (recorded in the report; parity feeds each test
    case's kinds from the dataset).
    """
    sources = [dataset, *(inputs or {}).values()]
    check_output(out, "model_repository", sources, force)
    if len(item_ids) != n_items + 1:
        raise ValueError(f"item_ids has {len(item_ids)} entries, expected n_items + 1 = {n_items + 1}")
    k = int(k if k is not None else min(cfg.k, n_items))
    ds = DatasetArtifact(dataset) if dataset is not None else None
    events = None
    if histories is None:
        if ds is None:
            raise ValueError("export_module needs a dataset or parity histories")
        cases, histories = ds.eval_cases("test", max_len)
        if exclude is None:
            exclude = ds.consumed_before(cases)
        if event_kinds:
            events = ds.history_kinds(cases, max_len, event_kinds)
    if popular is None:
        if ds is None:
            raise ValueError("export_module needs a dataset or a popular list")
        popular = popular_items(ds, cfg.popular_k)
    if len(histories) == 0:
        raise ExportError(f"{dataset} has no test cases: parity needs at least one")
    g = guarded(module, n_items)
    with artifact_dir(out, "model_repository", sources, force) as tmp:
        mdir, onnx_path = model_folder(tmp, cfg.name)
        log.info("exporting %s (L=%d, K=%d, %d items) to ONNX", cfg.name, max_len, k, n_items)
        info = export_onnx(g, max_len, onnx_path, cfg.opset, cfg.dynamo, cfg.allow_legacy_fallback)
        log.info("parity check on %d test cases", len(histories))
        parity = check_parity(g, onnx_path, histories, n_items, cfg, exclude, events)
        report = {"export": info, "parity": parity, **report_shapes(n_items, max_len, k, event_kinds or [])}
        if not parity["passed"]:
            raise ExportError(
                f"ONNX/PyTorch parity failed on {parity['n_failures']} of {parity['n_cases']} test cases "
                f"(max |score diff| {parity['max_abs_score_diff']:.3g}, tolerance {cfg.score_tolerance}); "
                f"first: {json.dumps(parity['failures'][:3])}. No model repository written.")
        write_model_files(mdir, cfg, max_len, k, item_ids, popular, report)
        extra = companions(tmp, histories) if companions is not None else {}
        for folder in extra:  # a companion answers in the ranker's item_idx: the same id map goes with it
            write_model_files_ids(tmp / folder, item_ids)
        write_manifest(tmp, step="export", params=cfg, inputs={**({"dataset": dataset} if dataset else {}), **(inputs or {})},
                       kind="model_repository", models=[cfg.name, *extra], n_items=n_items, max_len=max_len, k=k,
                       companions={f: r.get("kind") for f, r in extra.items()}, **(extra_manifest or {}))
    log.info("model repository written to %s (parity: %d cases, max diff %.2g, %d reordered)",
             out, parity["n_cases"], parity["max_abs_score_diff"], parity["reordered_cases"])
    return out


def write_model_files_ids(mdir: Path, item_ids: list[str]) -> None:
    from fusionrec.artifacts import atomic_write_json

    atomic_write_json(mdir / "item_ids.json", list(item_ids))


def companion_writer(m, cfg: ExportConfig, aligned: Path | None, text_embeddings: Path | None = None):
    """The ``companions`` hook of :func:`export_module` for model ``m``: query and explain models as configured."""
    from fusionrec.model_repository import EXPLAIN_SUFFIX, QUERY_SUFFIX
    from fusionrec.models.recommender import Recommender

    if not isinstance(m, Recommender):
        return None

    def write(tmp: Path, histories: np.ndarray) -> dict[str, dict]:
        out: dict[str, dict] = {}
        if cfg.explain and m.spec.event_kinds:
            log.warning("no %s%s: explanations do not cover a model that reads behaviour kinds yet", cfg.name, EXPLAIN_SUFFIX)
        elif cfg.explain:
            from fusionrec.explain import write_explain_model

            log.info("exporting %s%s (explanations for %d items per request)", cfg.name, EXPLAIN_SUFFIX, cfg.explain_k)
            out[cfg.name + EXPLAIN_SUFFIX] = write_explain_model(tmp / (cfg.name + EXPLAIN_SUFFIX), m, histories[:512], cfg,
                                                                 cfg.explain_k, cfg.score_tolerance)
        if cfg.query and aligned is not None and m.spec.modalities:
            from fusionrec.query import QueryTokenizer, build_query_module, text_encoder_source, write_query_model

            from fusionrec.models.align import load_heads

            if "text" not in load_heads(aligned):
                log.warning("no %s%s: the aligned artifact has no text modality", cfg.name, QUERY_SUFFIX)
                return out
            log.info("exporting %s%s (text encoder + aligned item table)", cfg.name, QUERY_SUFFIX)
            module = build_query_module(m, aligned, k=min(cfg.k, m.n_items), pool=cfg.query_pool, mode=cfg.query_mode,
                                        neighbours=cfg.query_neighbours, text_embeddings=text_embeddings)
            out[cfg.name + QUERY_SUFFIX] = write_query_model(tmp / (cfg.name + QUERY_SUFFIX), module,
                                                             QueryTokenizer(text_encoder_source(aligned, text_embeddings)), cfg)
        return out

    return write


def run(model: Path, dataset: Path, out: Path, cfg: ExportConfig, aligned: Path | None = None,
        text_embeddings: Path | None = None, force: bool = False) -> Path:
    """Export a trained model artifact into a Triton model repository (see module docstring).

    With ``aligned`` (the aligned artifact the model was trained with) and ``cfg.query``, the
    repository also holds ``<name>_query``; with ``cfg.explain``, ``<name>_explain``. ``text_embeddings``
    is the text embeddings artifact (default: the one named in the aligned artifact's manifest).
    """
    check_output(out, "model_repository", [model, dataset, *([aligned] if aligned is not None else [])], force)
    m = load_model(model, device="cpu")
    max_len = int(cfg.max_len or m.spec.max_len)
    ids = [str(x) for x in DatasetArtifact(dataset).item_ids.tolist()]
    if len(ids) != m.n_items + 1:
        raise ValueError(f"model {model} has {m.n_items} items but dataset {dataset} has {len(ids) - 1}: "
                         "export the model with the dataset it was trained on")
    k = min(cfg.k, m.n_items)
    return export_module(m.serving_module(k), m.n_items, max_len, ids, dataset, out, cfg,
                         inputs={"model": model, **({"aligned": Path(aligned)} if aligned is not None else {})}, k=k,
                         companions=companion_writer(m, cfg, Path(aligned) if aligned is not None else None,
                                                     Path(text_embeddings) if text_embeddings is not None else None),
                         force=force, event_kinds=list(getattr(m, "event_kinds", []) or []))


