"""A/A: how often does the A/B decision rule promote a model that is not better? (issue 13, item 9)

An A/A pair is two models trained the same way on the same data with different seeds: neither is
better in expectation, so every promotion is a false promotion. Comparing a repository with itself
(p = 1 always) tests nothing; this does. For each of ``--pairs`` pairs, cheap ID-only models are
trained on a small demo catalog, compared by the offline A/B (``fusionrec.ab.offline``, whole
history excluded, paired per user) and judged by the decision rule (``fusionrec.ab.decision.decide``,
the configured primary metric/segment, guardrails included). The false-promote rate is reported
with a Wilson 95% interval next to alpha/2 (the rule's nominal rate: two-sided p < alpha AND a
positive lift) and alpha.

    .venv/bin/python benchmarks/aa.py                      # 20 pairs -> benchmarks/results/aa.json

The rate is over trained pairs, so it includes what a fixed-model test ignores: two seeds give two
genuinely different models, and the paired test asks whether *this* model beats *that* one on these
users, not whether the training recipe is better.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steps import fresh_work  # noqa: E402
from protocol import RESULTS, Clock, provenance  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--segment", default="warm", help="primary segment of the decision (ID-only models score 0 on cold)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_aa"))
    ap.add_argument("--name", default="aa")
    args = ap.parse_args()

    import numpy as np
    import torch

    from fusionrec.ab.config import ABConfig
    from fusionrec.ab.decision import decide
    from fusionrec.ab.offline import offline_compare
    from fusionrec.ab.stats import wilson_ci
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.demo import DemoConfig, generate
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    if args.threads:
        torch.set_num_threads(args.threads)
    prov = provenance(sys.argv)
    clock = Clock()
    fresh_work(args.work, reuse=False)  # from scratch; refuses a folder no benchmark made
    with clock.step("data"):
        generate(args.work / "raw", DemoConfig(n_items=args.items, n_users=args.users, events_per_user=args.events, seed=0))
        ds_path = ingest(args.work / "raw", args.work / "dataset", IngestConfig(seed=0))
    ds = DatasetArtifact(ds_path)
    cfg = ABConfig(alpha=args.alpha, primary_segment=args.segment, bootstrap_resamples=500)
    tcfg = dict(model="id", epochs=args.epochs, patience=100, dim=32, device="cpu")
    pairs = []
    for p in range(args.pairs):
        arms = []
        with clock.step(f"pair {p}"):
            for s in (2 * p, 2 * p + 1):
                out = args.work / "models" / f"id_s{s}"
                train(ds_path, None, out, TrainConfig(**tcfg, seed=s))
                arms.append(load_model(out))
                shutil.rmtree(out)  # keep the disk small: the loaded model is all the comparison needs
            off = offline_compare(arms[0], arms[1], ds, cfg)
            d = decide(off, None, cfg)
        prim = d["rules"][0]
        pairs.append({"pair": p, "seeds": [2 * p, 2 * p + 1], "promote": d["promote"], "decided_by": d["decided_by"],
                      "pvalue": prim["pvalue"], "lift": prim["lift"], "mean_control": prim["mean_control"],
                      "mean_treatment": prim["mean_treatment"], "n_users": prim["n_users"]})
        print(f"pair {p}: p={prim['pvalue']:.3f} lift={prim['lift']:+.1%} -> {'PROMOTE' if d['promote'] else 'reject'}", flush=True)
    promotes = sum(x["promote"] for x in pairs)
    significant = sum(x["pvalue"] < args.alpha for x in pairs)
    lo, hi = wilson_ci(promotes, len(pairs), 0.95)
    res = {
        "name": args.name, "provenance": prov,
        "config": {"pairs": args.pairs, "items": args.items, "users": args.users, "events_per_user": args.events,
                   "train": tcfg, "ab": cfg.model_dump(mode="json")},
        "dataset": {"test_cases": ds.stats["test_cases"]},
        "pairs": pairs,
        "false_promote": {"count": promotes, "n": len(pairs), "rate": promotes / len(pairs), "wilson95": [lo, hi],
                          "nominal_alpha_over_2": args.alpha / 2, "alpha": args.alpha},
        "significant_either_direction": {"count": significant, "rate": significant / len(pairs)},
        "mean_abs_p": float(np.mean([x["pvalue"] for x in pairs])),
        "timings": clock.steps,
        "total": {"wall_s": round(sum(v["wall_s"] for v in clock.steps.values()), 1),
                  "cpu_s": round(sum(v["cpu_s"] for v in clock.steps.values()), 1)},
        "cache": "nothing reused (work folder rebuilt)",
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nA/A false promotions: {promotes}/{len(pairs)} = {promotes / len(pairs):.0%} (Wilson 95% [{lo:.0%}, {hi:.0%}]) "
          f"vs nominal alpha/2 = {args.alpha / 2:.1%}; p < alpha in either direction: {significant}/{len(pairs)}")
    print(f"written {RESULTS / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
