"""Encoding speed on the built-in demo catalog: items/s per modality, PyTorch vs onnxruntime for the
image encoder, the batch-size effect, and a cached re-run's time as a fraction of the first run.

    .venv/bin/python benchmarks/encode.py                 # the default 2,000-item demo catalog
    .venv/bin/python benchmarks/encode.py --items 200     # a quick run

Prints a table and writes benchmarks/results/encode.json. Encoders are loaded once (not timed);
the first run writes into a fresh content-hash cache, the re-run reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dataset(work: Path, items: int, seed: int) -> Path:
    from fusionrec.data.demo import DemoConfig, generate
    from fusionrec.data.ingest import IngestConfig, run as ingest

    ds = work / f"dataset-{items}-{seed}"
    if not (ds / "manifest.json").exists():
        users = max(20, items // 2)
        raw = generate(work / f"raw-{items}-{seed}", DemoConfig(n_items=items, n_users=users, seed=seed))
        ingest(raw, ds, IngestConfig())
    return ds


def _run(ds: Path, out: Path, enc, **cfg) -> dict:
    from fusionrec.artifacts import read_manifest
    from fusionrec.encoders.encode import EncodeConfig, run

    t0 = time.perf_counter()
    run(ds, out, EncodeConfig(**cfg), encoder=enc)
    wall = time.perf_counter() - t0
    m = read_manifest(out)
    c = m["counts"]
    return {"wall_s": round(wall, 3), "encoded": c["encoded"], "cached": c["cached"], "masked": c["masked"], "encode_s": c.get("encode_seconds"), "items_per_s": c.get("items_per_s"), "dim": m["dim"]}


def _subset(ds: Path, work: Path, n: int) -> Path:
    """A copy of the dataset artifact keeping its first ``n`` items (media shared by symlink)."""
    import pandas as pd

    from fusionrec.artifacts import save_parquet, write_manifest

    sub = work / f"{ds.name}-first{n}"
    if (sub / "manifest.json").exists():
        return sub
    sub.mkdir(parents=True, exist_ok=True)
    items = pd.read_parquet(ds / "items.parquet").sort_values("item_idx").head(n)
    save_parquet(items, sub / "items.parquet")
    for f in ("meta.json", "stats.json"):
        if (ds / f).exists():
            shutil.copy(ds / f, sub / f)
    if not (sub / "media").exists():
        os.symlink((ds / "media").resolve(), sub / "media")
    write_manifest(sub, step="bench-subset", params={"n": n}, kind="dataset")
    return sub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000, help="demo catalog size (default: the demo default, 2000)")
    ap.add_argument("--sweep-items", type=int, default=256, help="items used for the batch-size sweep and PyTorch-vs-ORT")
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--modalities", default="text,image,audio,tabular")
    ap.add_argument("--workdir", type=Path, default=None, help="where the catalog and outputs go (default: a temp folder, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    os.environ.setdefault("FUSIONREC_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from fusionrec.encoders.registry import available, build

    keep = args.workdir is not None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fusionrec-bench-encode-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["FUSIONREC_CACHE"] = str(work / "cache")  # fresh caches (ONNX export included)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    mods = [m for m in args.modalities.split(",") if m]
    if "audio" in mods and not available("audio"):
        mods.remove("audio")
    result: dict = {
        "items": args.items,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "python": platform.python_version()},
        "modalities": {},
        "image_backends": {},
        "batch_size": {},
    }
    try:
        t0 = time.perf_counter()
        ds = _dataset(work, args.items, args.seed)
        result["catalog_seconds"] = round(time.perf_counter() - t0, 1)
        sweep = _subset(ds, work, min(args.sweep_items, args.items))
        for m in mods:
            t = time.perf_counter()
            try:
                enc = build(m)
            except FileNotFoundError as exc:
                print(f"skip {m}: {exc}", file=sys.stderr)
                continue
            load_s = time.perf_counter() - t
            cache = work / "cache" / "embeddings"
            first = _run(ds, work / "out" / m, enc, modality=m, cache_dir=str(cache), batch_size=32)
            rerun = _run(ds, work / "out" / f"{m}-rerun", enc, modality=m, cache_dir=str(cache), batch_size=32)
            result["modalities"][m] = {
                "encoder": getattr(enc, "name", None), "load_s": round(load_s, 2), "first": first, "rerun": rerun,
                "rerun_fraction": round(rerun["wall_s"] / first["wall_s"], 4) if first["wall_s"] else None,
            }
            print(f"{m:8s} {first['items_per_s'] or 0:8.1f} items/s  first {first['wall_s']:.1f}s  cached re-run {rerun['wall_s']:.2f}s ({100 * rerun['wall_s'] / first['wall_s']:.1f}%)", flush=True)
            if m in ("text", "image", "audio"):
                result["batch_size"][m] = {}
                for b in batch_sizes:
                    r = _run(sweep, work / "out" / f"{m}-b{b}", enc, modality=m, cache=False, batch_size=b)
                    result["batch_size"][m][str(b)] = r["items_per_s"]
                    print(f"  {m} batch {b:3d}: {r['items_per_s']} items/s", flush=True)
            if m == "image":
                result["image_backends"]["onnxruntime"] = result["batch_size"]["image"].get("32")
                torch_enc = build("image", backend="torch")
                r = _run(sweep, work / "out" / "image-torch", torch_enc, modality="image", cache=False, batch_size=32)
                result["image_backends"][f"pytorch-{torch_enc.device}"] = r["items_per_s"]
                print(f"  image pytorch ({torch_enc.device}) batch 32: {r['items_per_s']} items/s", flush=True)
                del torch_enc
            del enc
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)

    lines = ["", f"encode benchmark: demo catalog, {args.items} items, {os.cpu_count()} CPUs, cuda={torch.cuda.is_available()}", ""]
    lines.append(f"{'modality':10s}{'encoder':22s}{'dim':>6s}{'items/s':>10s}{'first s':>10s}{'re-run s':>10s}{'re-run %':>10s}")
    for m, r in result["modalities"].items():
        lines.append(
            f"{m:10s}{str(r['encoder']):22s}{r['first']['dim']:>6d}{(r['first']['items_per_s'] or 0):>10.1f}{r['first']['wall_s']:>10.2f}"
            f"{r['rerun']['wall_s']:>10.2f}{100 * (r['rerun_fraction'] or 0):>9.1f}%"
        )
    if result["batch_size"]:
        lines += ["", f"batch size (items/s on the first {min(args.sweep_items, args.items)} items, no cache):"]
        lines.append(f"{'modality':10s}" + "".join(f"{'b=' + str(b):>10s}" for b in batch_sizes))
        for m, r in result["batch_size"].items():
            lines.append(f"{m:10s}" + "".join(f"{(r.get(str(b)) or 0):>10.1f}" for b in batch_sizes))
    if result["image_backends"]:
        lines += ["", "image encoder backend (batch 32): " + ", ".join(f"{k} {v} items/s" for k, v in result["image_backends"].items())]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
