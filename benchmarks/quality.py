"""Recommendation quality on the built-in demo catalog (or MovieLens): every baseline and fusion strategy.

Trains, by the same code path, popularity, ID-only (SASRec-like), each single modality and the fused
model with each fusion strategy, and reports full-ranking Recall@10/20, NDCG@10/20, MRR and
coverage@10, overall / warm / cold-start items, training time and sequences/s, beside the demo
generator's oracle ceiling and the gap to it.

    .venv/bin/python benchmarks/quality.py                        # default demo catalog (2,000 items, 1,000 users)
    .venv/bin/python benchmarks/quality.py --items 600 --users 400 --epochs 15   # quicker
    .venv/bin/python benchmarks/quality.py --dataset movielens    # MovieLens latest-small (text + tabular)

Data, embeddings and the aligned artifact are cached under --work (reused when present; --fresh
rebuilds). Writes benchmarks/results/quality[_<dataset>].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _step(name: str, out: Path, fn, timings: dict, fresh: bool = False) -> Path:
    if (out / "manifest.json").exists() and not fresh:
        print(f"[cached] {name}: {out}", flush=True)
        return out
    t0 = time.perf_counter()
    fn()
    timings[name] = round(time.perf_counter() - t0, 1)
    print(f"[{timings[name]:>6.1f}s] {name}", flush=True)
    return out


def prepare(args, work: Path, timings: dict) -> tuple[Path, list[Path], Path | None]:
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.encode import run as encode

    raw = work / "raw"
    if args.dataset == "demo":
        from fusionrec.data.demo import DemoConfig, generate

        if not (raw / "items.csv").exists() or args.fresh:
            t0 = time.perf_counter()
            generate(raw, DemoConfig(n_items=args.items, n_users=args.users, events_per_user=args.events, seed=args.seed))
            timings["generate"] = round(time.perf_counter() - t0, 1)
        modalities = ["text", "image", "audio", "tabular"]
    else:
        from fusionrec.data.movielens import MovieLensConfig, convert

        if not raw.exists() or args.fresh:
            convert(raw, MovieLensConfig())
        modalities = ["text", "tabular"]
    ds = _step("ingest", work / "dataset", lambda: ingest(raw, work / "dataset", IngestConfig(seed=args.seed)), timings, args.fresh)
    embs = [_step(f"encode {m}", work / f"emb_{m}", lambda m=m: encode(ds, work / f"emb_{m}", EncodeConfig(modality=m)), timings, args.fresh)
            for m in modalities]
    return raw, embs, ds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["demo", "movielens"], default="demo")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=None, help="max epochs per model (default: TrainConfig's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="all", help="comma list of names to run (popularity,id,single:text,...,fused:attention,...)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="TrainConfig override key=value for every model")
    ap.add_argument("--align-set", dest="align_sets", action="append", default=[], help="AlignConfig override key=value")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--fresh", action="store_true", help="rebuild the cached data, embeddings and aligned artifact")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()

    from fusionrec.artifacts import read_json
    from fusionrec.config import parse_overrides
    from fusionrec.evaluate import summary_table
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    work = args.work or Path("artifacts") / f"bench_quality_{args.dataset}" / (f"{args.items}x{args.users}x{args.events}-s{args.seed}" if args.dataset == "demo" else "ml")
    work.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    raw, embs, ds = prepare(args, work, timings)
    acfg = AlignConfig(seed=args.seed, **parse_overrides(args.align_sets))
    aligned = _step("align", work / "aligned", lambda: align(ds, embs, work / "aligned", acfg), timings, args.fresh or bool(args.align_sets))
    amet = read_json(aligned / "metrics.json")
    mods = read_json(aligned / "manifest.json")["modalities"]

    overrides = parse_overrides(args.sets)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    runs: dict[str, dict] = {"popularity": dict(model="popularity"), "id": dict(model="id")}
    runs.update({f"single:{m}": dict(model=f"single:{m}") for m in mods})
    runs.update({f"fused:{f}": dict(model="fused", fusion=f) for f in ("attention", "weighted", "concat", "user_gate")})
    if args.models != "all":
        wanted = [s.strip() for s in args.models.split(",")]
        runs = {k: v for k, v in runs.items() if k in wanted}
    results: dict[str, dict] = {}
    for name, spec in runs.items():
        cfg = TrainConfig(**{**overrides, **spec, "seed": args.seed})
        out = work / "models" / name.replace(":", "_")
        t0 = time.perf_counter()
        train(ds, aligned if spec["model"] not in ("id", "popularity") else None, out, cfg)
        m = read_json(out / "metrics.json")
        tr = m["training"]
        results[name] = {"test": m["test"], "train_seconds": round(tr.get("train_seconds") or 0.0, 2),
                         "sequences_per_second": round(tr["sequences_per_second"], 1) if tr.get("sequences_per_second") else None,
                         "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"), "wall_seconds": round(time.perf_counter() - t0, 1),
                         "best_valid_ndcg10": tr.get("best_valid_ndcg10")}
        t = m["test"]
        sps = f"{tr['sequences_per_second']:.0f} seq/s" if tr.get("sequences_per_second") else ""
        print(f"{name:<18} NDCG@10 overall {t['overall']['ndcg@10']:.4f} warm {t['warm']['ndcg@10']:.4f} cold {t['cold']['ndcg@10']:.4f}"
              f"  ({results[name]['train_seconds']:.1f}s train, {sps})", flush=True)

    oracle = None
    if args.dataset == "demo":
        from fusionrec.data.demo import oracle_metrics

        oracle = oracle_metrics(raw, ds, split="test")

    table_rows = {k: v["test"] for k, v in results.items()}
    if oracle:
        table_rows["oracle"] = oracle
    table = summary_table(table_rows, ks=(10, 20))
    lines = [table, ""]
    speed = ["| model | train s | sequences/s | epochs (best) |", "|---|---|---|---|"]
    for k, v in results.items():
        speed.append(f"| {k} | {v['train_seconds']} | {v['sequences_per_second'] or '-'} | {v['epochs_run'] or '-'} ({v['best_epoch'] or '-'}) |")
    lines += speed

    checks: dict[str, bool | None] = {}
    fused = {k: v for k, v in results.items() if k.startswith("fused:")}
    singles = {k: v for k, v in results.items() if k.startswith("single:")}
    gap = {}
    if fused:
        best_f = max(fused, key=lambda k: fused[k]["test"]["overall"]["ndcg@10"])
        bf = fused[best_f]["test"]
        others = {**singles, **({"id": results["id"]} if "id" in results else {})}
        checks["best_fused"] = best_f  # type: ignore[assignment]
        for k, v in others.items():
            checks[f"{best_f} > {k} (NDCG@10 overall)"] = bf["overall"]["ndcg@10"] > v["test"]["overall"]["ndcg@10"]
        for f, v in fused.items():
            for k, o in others.items():
                checks[f"{f} > {k}"] = v["test"]["overall"]["ndcg@10"] > o["test"]["overall"]["ndcg@10"]
        if "popularity" in results:
            pop_cold = results["popularity"]["test"]["cold"]["ndcg@10"]
            checks[f"{best_f} cold NDCG@10 >= 5x popularity"] = bf["cold"]["ndcg@10"] >= 5 * max(pop_cold, 1e-4)
        if oracle:
            for seg in ("overall", "warm", "cold"):
                gap[seg] = {m: round(oracle[seg][m] - bf[seg][m], 4) for m in ("recall@10", "ndcg@10", "mrr") if m in oracle[seg]}
    lines += ["", "Alignment (cross-modal Recall@10, untrained heads -> trained):", ""]
    for pair, after in amet["retrieval"]["after"].items():
        b = amet["retrieval"]["before"].get(pair, {})
        lines.append(f"- {pair}: R@1 {b.get('recall@1', 0):.3f} -> {after['recall@1']:.3f}, R@10 {b.get('recall@10', 0):.3f} -> {after['recall@10']:.3f}")
    if gap:
        lines += ["", f"Gap of the best fused model to the oracle: {json.dumps(gap)}"]
    lines += ["", "Checks:"] + [f"- {k}: {v}" for k, v in checks.items()]
    text = "\n".join(lines)
    print(text)

    suffix = "" if args.dataset == "demo" else f"_{args.dataset}"
    suffix += f"_{args.tag}" if args.tag else ""
    res = {"dataset": args.dataset, "items": args.items, "users": args.users, "events": args.events, "seed": args.seed,
           "train_overrides": overrides, "align": acfg.model_dump(), "align_metrics": amet["retrieval"], "results": results,
           "oracle": oracle, "gap_best_fused_to_oracle": gap, "checks": checks, "prep_seconds": timings,
           "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / f"quality{suffix}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (ROOT / "results" / f"quality{suffix}.md").write_text(f"# Quality ({args.dataset})\n\n{text}\n")
    print(f"written to {ROOT / 'results' / f'quality{suffix}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
