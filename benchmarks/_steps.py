"""The benchmarks' step runner: run a pipeline step unless its artifact is already there (resumable runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def step(name: str, out: Path, fn: Callable[[], object], timings: dict, fresh: bool = False) -> Path:
    """Run ``fn`` (which writes the artifact ``out``) unless ``out`` holds a manifest and not ``fresh``.

    ``timings[name]`` gets the seconds it took, or ``"reused"``.
    """
    if (out / "manifest.json").exists() and not fresh:
        print(f"[reuse] {name}: {out}", flush=True)
        timings[name] = "reused"
        return out
    t0 = time.perf_counter()
    print(f"[run]   {name} ...", flush=True)
    fn()
    timings[name] = round(time.perf_counter() - t0, 1)
    print(f"        {name}: {timings[name]} s", flush=True)
    return out


def fused_demo_model(work: Path, items: int, users: int, events: int, seed: int, timings: dict) -> tuple[Path, Path, Path, Path]:
    """The demo catalog, its dataset, all four modalities encoded and aligned, and a fused attention model.

    Each step is skipped when its artifact is in ``work`` already (recorded as ``"reused"`` in
    ``timings``). Returns ``(raw catalog, dataset, aligned, model)`` folders.
    """
    from fusionrec.data.demo import DemoConfig, generate
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    raw = work / "raw"
    step("generate", raw, lambda: generate(raw, DemoConfig(n_items=items, n_users=users, events_per_user=events, seed=seed)),
         timings)
    ds = step("ingest", work / "dataset", lambda: ingest(raw, work / "dataset", IngestConfig(seed=seed)), timings)
    embs = [step(f"encode {m}", work / f"emb_{m}", lambda m=m: encode(ds, work / f"emb_{m}", EncodeConfig(modality=m)), timings)
            for m in ("text", "image", "audio", "tabular")]
    aligned = step("align", work / "aligned", lambda: align(ds, embs, work / "aligned", AlignConfig(seed=seed)), timings)
    model = work / "models" / "fused_attention"
    step("train fused:attention", model,
         lambda: train(ds, aligned, model, TrainConfig(model="fused", fusion="attention", seed=seed)), timings)
    return raw, ds, aligned, model
