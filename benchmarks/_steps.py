"""The benchmarks' step runners: one pipeline step unless its artifact is already there (resumable runs), the demo
catalog every demo benchmark prepares (generate, ingest, encode) in its own work folder, and the seeded fused demo
models that benchmarks/query.py and benchmarks/explain.py measure."""

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


WORK_MARKER = ".fusionrec-benchmark-work"


def fresh_work(work: Path, reuse: bool) -> dict:
    """A benchmark's own work folder, emptied first unless ``reuse``, with its encoder cache inside it.

    Only a folder a benchmark made (it holds ``WORK_MARKER``) is ever emptied: a missing or empty folder is taken,
    anything else is refused with a ``SystemExit`` that names the folder, so a mistyped ``--work`` loses nothing.
    ``$FUSIONREC_CACHE`` points at ``work/encoder_cache`` (the image encoder's ONNX export is cached there too),
    so nothing comes from an earlier run unless ``reuse``. Returns the cache record the result JSONs carry:
    ``{"reuse_requested", "reused_artifacts", "encoder_cache": {"folder", "existed_before"}}``.
    """
    import os
    import shutil

    if work.exists() and any(work.iterdir()) and not (work / WORK_MARKER).exists():
        raise SystemExit(f"{work} holds files that no benchmark wrote (no {WORK_MARKER} in it); refusing to use it as a "
                         "work folder: choose a new or empty folder")
    if work.exists() and not reuse:
        shutil.rmtree(work)  # from scratch: every artifact below is rebuilt (the marker says a benchmark made it all)
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).write_text("a fusionrec benchmark's work folder: a later run may empty it\n")
    enc_cache = work / "encoder_cache"
    os.environ["FUSIONREC_CACHE"] = str(enc_cache)
    return {"reuse_requested": reuse, "reused_artifacts": [],
            "encoder_cache": {"folder": str(enc_cache), "existed_before": enc_cache.exists()}}


def demo_catalog(work: Path, demo_cfg, ingest_cfg, clock, cached: Callable[[Path], bool]) -> tuple[Path, Path, dict[str, Path]]:
    """Generate the demo catalog into ``work/raw``, ingest it into ``work/dataset`` and encode every modality into
    ``work/emb/<modality>`` (encoder cache: ``$FUSIONREC_CACHE/embeddings``, see :func:`fresh_work`).

    ``cached(path)`` says whether an artifact already there is kept (``protocol.reuse_checker``); ``clock``
    (``protocol.Clock``) records each step. Returns ``(raw, dataset, {modality: embeddings})``.
    """
    import os

    from fusionrec.data.demo import generate
    from fusionrec.data.ingest import run as ingest
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode
    from fusionrec.encoders.registry import MODALITIES

    raw, ds = work / "raw", work / "dataset"
    with clock.step("generate catalog"):
        if not cached(raw):
            generate(raw, demo_cfg)
    with clock.step("ingest"):
        if not cached(ds):
            ingest(raw, ds, ingest_cfg)
    enc_cache = Path(os.environ["FUSIONREC_CACHE"]) / "embeddings"
    embs = {}
    for m in MODALITIES:
        out = work / "emb" / m
        with clock.step(f"encode {m}"):
            if not cached(out):
                encode(ds, out, EncodeConfig(modality=m, cache_dir=str(enc_cache)))
        embs[m] = out
    return raw, ds, embs


def seeded_fused_models(work: Path, *, items: int, users: int, events: int, data_seed: int, seeds: list[int],
                        clock, reuse: bool = False, train_cfg: dict | None = None, align_cfg: dict | None = None) -> dict:
    """The demo catalog (:func:`demo_catalog`, in a :func:`fresh_work` folder), then per seed an alignment and a fused
    attention model. With ``reuse`` an artifact already in ``work`` (it has a manifest) is kept and listed in
    ``cache["reused_artifacts"]``. ``clock`` (benchmarks/protocol.py ``Clock``) records wall and CPU seconds per step.

    Returns ``{"raw", "dataset", "embeddings": {modality: folder}, "by_seed": {seed: {"aligned", "model"}},
    "cache", "config"}``.
    """
    from fusionrec.data.demo import DemoConfig
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train
    from protocol import reuse_checker

    cache = fresh_work(work, reuse)
    cached = reuse_checker(reuse, cache)
    demo_cfg = DemoConfig(n_items=items, n_users=users, events_per_user=events, seed=data_seed)
    ingest_cfg = IngestConfig(seed=data_seed)
    raw, ds, embs = demo_catalog(work, demo_cfg, ingest_cfg, clock, cached)
    tcfg = dict(train_cfg or {})
    acfg = dict(align_cfg or {})
    by_seed = {}
    for seed in seeds:
        aligned, model = work / f"aligned_s{seed}", work / "models" / f"fused_attention_s{seed}"
        with clock.step(f"align seed {seed}"):
            if not cached(aligned):
                align(ds, list(embs.values()), aligned, AlignConfig(**{**acfg, "seed": seed}))
        with clock.step(f"train fused:attention seed {seed}"):
            if not cached(model):
                train(ds, aligned, model, TrainConfig(**{**tcfg, "model": "fused", "fusion": "attention", "seed": seed}))
        by_seed[seed] = {"aligned": aligned, "model": model}
    config = {"generator": demo_cfg.model_dump(mode="json"), "ingest": ingest_cfg.model_dump(mode="json"),
              "encode": {"modalities": list(embs)}, "align": AlignConfig(**acfg).model_dump(mode="json", exclude={"seed"}),
              "train": TrainConfig(**{**tcfg, "model": "fused", "fusion": "attention"}).model_dump(mode="json", exclude={"seed"})}
    return {"raw": raw, "dataset": ds, "embeddings": embs, "by_seed": by_seed, "cache": cache, "config": config}


def seeded_demo_bench(description: str, work: str, name: str, add_args: Callable | None = None):
    """The shared start of a benchmark over ``seeded_fused_models`` (explain.py, query.py): its arguments (the demo
    catalog at 2,000 x 1,000, seeds, epochs, ``--threads``, ``--work``, ``--reuse``, ``--name``, plus what
    ``add_args(parser)`` adds), torch threads set, provenance taken, and the catalog and per-seed models prepared.

    Returns ``(args, seeds, provenance, clock, prep)``.
    """
    import argparse
    import sys

    from protocol import Clock, add_demo_args, provenance

    ap = argparse.ArgumentParser(description=description)
    add_demo_args(ap)
    ap.set_defaults(items=2000, users=1000)  # the catalog these figures have always been measured on
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    ap.add_argument("--work", type=Path, default=Path(work), help="work folder (emptied first unless --reuse)")
    ap.add_argument("--reuse", action="store_true", help="reuse artifacts already in --work (recorded in the JSON)")
    ap.add_argument("--name", default=name, help="result file stem under benchmarks/results/")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    prov = provenance(sys.argv)
    clock = Clock()
    prep = seeded_fused_models(args.work, items=args.items, users=args.users, events=args.events, data_seed=args.data_seed,
                               seeds=seeds, clock=clock, reuse=args.reuse, train_cfg={"epochs": args.epochs, "patience": args.patience})
    return args, seeds, prov, clock, prep


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct, in order)."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: a comma-separated list of distinct integers, got {text!r}")
    return seeds
