"""A/B benchmark (power and sanity of the decision) on the built-in demo catalog.

Builds the demo catalog, ingests, encodes every modality, aligns, trains the fused model and
the ID-only baseline, exports both, then runs the automated A/B (offline paired tests, online
replay on one local Triton server, team-draft interleaving) three times:

1. fused (treatment) vs ID-only (control): should be PROMOTED with p < 0.05;
2. a deliberately broken treatment (the fused repository with its item table shuffled, so
   ITEM_IDX points at the wrong items) vs ID-only: must be REJECTED;
The decision is taken on the segment ``--segment`` names (default ``warm``: the ID-only control scores 0
on every cold case by construction, so an overall or cold lift against it says nothing about ranking
skill); warm and cold lifts are reported separately. The A/A question (how often the rule promotes a
model that is not better) is ``benchmarks/aa.py``: comparing a repository with itself gives p = 1 by
construction and was dropped.

    .venv/bin/python benchmarks/ab.py [--items 1000 --users 600 --events 30 --epochs 20] [--work artifacts/bench_ab] [--no-online]

From scratch by default (the work folder is emptied first); ``--reuse`` keeps the artifacts already in
``--work`` (recorded in the JSON with the commit, command and versions). Prints a
table and writes benchmarks/results/ab.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _steps import demo_catalog, fresh_work, step  # benchmarks/ is on sys.path when a script here runs
from protocol import Clock, provenance, reuse_checker

ROOT = Path(__file__).resolve().parent


def shuffled_repo(src: Path, out: Path, seed: int = 0) -> Path:
    """Copy a model repository and shuffle its item table (item_ids.json): a broken export."""
    from fusionrec.artifacts import read_json, write_manifest

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    for ids_path in out.glob("*/item_ids.json"):
        ids = read_json(ids_path)
        rest = np.array(ids[1:], dtype=object)
        np.random.default_rng(seed).shuffle(rest)
        ids_path.write_text(json.dumps([ids[0], *rest.tolist()]))
    manifest = read_json(out / "manifest.json")
    (out / "manifest.json").unlink()
    write_manifest(out, step="export", kind="model_repository", params=manifest.get("params"),
                   models=manifest.get("models"), note="item table shuffled on purpose (benchmark: broken treatment)")
    return out


def summarize(path: Path) -> dict:
    from fusionrec.artifacts import read_json

    d = read_json(path / "decision.json")
    m = read_json(path / "metrics.json")
    prim = d["rules"][0]
    out = {"promote": d["promote"], "decided_by": d["decided_by"], "reason": d["reason"], "primary_metric": prim["metric"],
           "control": prim["mean_control"], "treatment": prim["mean_treatment"], "lift": prim["lift"], "lift_ci": prim["lift_ci"],
           "p": prim["pvalue"], "cohens_dz": prim["cohens_dz"], "n_users": prim["n_users"], "n_cases": prim["n_cases"],
           "rules": {r["rule"]: r["passed"] for r in d["rules"]}, "segment": prim["segment"],
           "events": d.get("events")}
    # warm and cold lifts side by side, whatever segment decided
    for c in d.get("secondary", []) + [{"metric": prim["metric"], "segment": prim["segment"], "lift": prim["lift"],
                                         "lift_ci_low": prim["lift_ci"][0], "lift_ci_high": prim["lift_ci"][1],
                                         "diff": prim["diff"], "mean_control": prim["mean_control"], "mean_treatment": prim["mean_treatment"]}]:
        if c.get("metric") == prim["metric"] and c.get("segment") in ("warm", "cold", "overall"):
            out[f"{c['segment']}.lift"] = c.get("lift")
            out[f"{c['segment']}.diff"] = c.get("diff")
            out[f"{c['segment']}.control"] = c.get("mean_control")
            out[f"{c['segment']}.treatment"] = c.get("mean_treatment")
    for key in ("online.control.hit_rate", "online.treatment.hit_rate", "online.p_clustered", "online.control.latency_p99_ms",
                "online.treatment.latency_p99_ms", "interleaving.treatment_share", "interleaving.pvalue",
                "cold.recall@20.control", "cold.recall@20.treatment", "coverage.control", "coverage.treatment"):
        if key in m:
            out[key] = m[key]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 600 users give the warm-segment decision ~300 users; 300 were too few for the rule to decide
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--events", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_ab"))
    ap.add_argument("--reuse", action="store_true", help="reuse the artifacts already in --work (recorded)")
    ap.add_argument("--no-online", action="store_true", help="offline A/B only (no Triton)")
    ap.add_argument("--segment", default="warm", choices=["warm", "overall", "cold"], help="primary segment of the decision")
    ap.add_argument("--latency-slo-ms", type=float, default=None,
                    help="optional absolute p99 SLO (off by default: the relative rule compares both arms in the same replay)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "ab.json")
    args = ap.parse_args()

    from fusionrec.ab import ABConfig, run as ab_run
    from fusionrec.data.demo import DemoConfig
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.export import ExportConfig, run as export
    from fusionrec.models.align import AlignConfig, run as align
    from fusionrec.train import TrainConfig, run as train

    prov = provenance(sys.argv)
    w = args.work
    cache = fresh_work(w, args.reuse)
    clock = Clock()
    _, ds, emb_by = demo_catalog(w, DemoConfig(n_items=args.items, n_users=args.users, events_per_user=args.events, seed=args.seed),
                                 IngestConfig(seed=args.seed), clock, reuse_checker(args.reuse, cache))
    embs = list(emb_by.values())
    timings: dict[str, float | str] = {k: v["wall_s"] for k, v in clock.steps.items()}
    aligned = step("align", w / "aligned", lambda: align(ds, embs, w / "aligned", AlignConfig(seed=args.seed)), timings)
    fused = step("train fused", w / "model_fused", lambda: train(ds, aligned, w / "model_fused", TrainConfig(model="fused", epochs=args.epochs, seed=args.seed)), timings)
    idm = step("train id", w / "model_id", lambda: train(ds, None, w / "model_id", TrainConfig(model="id", epochs=args.epochs, seed=args.seed)), timings)
    ecfg = dict(instance_kind="KIND_CPU")
    repo_f = step("export fused", w / "repo_fused", lambda: export(fused, ds, w / "repo_fused", ExportConfig(name="fused", **ecfg)), timings)
    repo_i = step("export id", w / "repo_id", lambda: export(idm, ds, w / "repo_id", ExportConfig(name="id_only", **ecfg)), timings)
    repo_b = shuffled_repo(repo_f, w / "repo_broken", seed=args.seed)

    cfg = ABConfig(seed=args.seed, primary_segment=args.segment, latency_p99_slo_ms=args.latency_slo_ms)
    results = {}
    runs = {"fused_vs_id": (repo_i, repo_f), "broken_vs_id": (repo_i, repo_b)}
    for name, (ctrl, treat) in runs.items():
        t0 = time.perf_counter()
        out = w / f"ab_{name}"
        if args.no_online:
            ab_run(ctrl, treat, ds, out, cfg)
        else:
            from fusionrec.serving.ab_online import replay_on_triton

            ab_run(ctrl, treat, ds, out, cfg, online=replay_on_triton)
        results[name] = summarize(out) | {"seconds": round(time.perf_counter() - t0, 1), "report": str(out / "report.html")}

    checks = {
        "fused_primary_significant_p_below_0.05": bool(results["fused_vs_id"]["rules"]["primary_metric"] and results["fused_vs_id"]["p"] < 0.05),
        "fused_promoted": bool(results["fused_vs_id"]["promote"]),
        "broken_rejected": not results["broken_vs_id"]["promote"],
    }
    print()
    print(f"{'run':<22} {'decision':<9} {'decided by':<18} {'ndcg@10 C':>10} {'ndcg@10 T':>10} {'lift':>9} {'p':>10} {'online hit C/T':>16} {'interl. share':>14}")
    for name, r in results.items():
        online = f"{r.get('online.control.hit_rate', float('nan')):.3f}/{r.get('online.treatment.hit_rate', float('nan')):.3f}"
        print(f"{name:<22} {'PROMOTE' if r['promote'] else 'reject':<9} {r['decided_by']:<18} {r['control']:>10.4f} {r['treatment']:>10.4f} "
              f"{r['lift']:>+9.1%} {r['p']:>10.3g} {online:>16} {r.get('interleaving.treatment_share', float('nan')):>14.3f}")
    print()
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    payload = {"provenance": prov, "reused": sorted(cache["reused_artifacts"] + [k for k, v in timings.items() if v == "reused"]),
               "encoder_cache": cache["encoder_cache"], "config": {"items": args.items, "users": args.users, "events_per_user": args.events, "epochs": args.epochs,
                          "seed": args.seed, "online": not args.no_online, "ab": cfg.model_dump(mode="json")},
               "machine": {"python": platform.python_version(), "platform": platform.platform()},
               "timings_s": timings, "results": results, "checks": checks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
