"""Recommendation quality on the built-in demo catalog, by the evaluation protocol of docs/evaluation.md.

From scratch in its own work folder (nothing reused): generate the catalog, ingest, encode all four
modalities, then the floors (random ranking, popularity, content-kNN), the ceilings (the generator's
oracle and the content oracle), and per seed: align, ID-only, and the single modality and fusion chosen
on *validation* (every candidate trained at the first seed). Rows are means over seeds with 95%
intervals; "beats" only with a paired interval above zero. Budgets are epochs (early stopping on
validation NDCG@10), never seconds.

    .venv/bin/python benchmarks/quality.py                                  # 3 seeds, writes benchmarks/results/quality.{json,md}
    .venv/bin/python benchmarks/quality.py --seeds 0 --fusions attention --name quality_smoke   # a quick look

The README's demo table is rendered from benchmarks/results/quality.json (benchmarks/readme_tables.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import FUSIONS, add_demo_args, run_quality  # noqa: E402
from fusionrec.encoders.registry import MODALITIES  # noqa: E402  (the library's modality order: the channel order)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_demo_args(ap)
    ap.add_argument("--fusions", default=",".join(FUSIONS))
    ap.add_argument("--cold-bias", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the chosen fusion with train.calibrate_cold's bias (same weights, a second row)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_quality_demo"))
    ap.add_argument("--reuse", action="store_true", help="reuse data/embedding/alignment artifacts in --work (recorded in the JSON)")
    ap.add_argument("--name", default="quality", help="result file stem under benchmarks/results/")
    args = ap.parse_args()

    from fusionrec.data.demo import DemoConfig, generate, oracle_metrics

    demo_cfg = DemoConfig(n_items=args.items, n_users=args.users, events_per_user=args.events, seed=args.data_seed)

    def make_raw(out: Path) -> dict:
        generate(out, demo_cfg)
        return {"generator": demo_cfg.model_dump(mode="json")}

    def oracles(raw: Path, ds: Path) -> dict:
        return {"oracle (generator's truth)": oracle_metrics(raw, ds, per_case=True)[1],
                "content oracle (no hidden popularity of unseen items)": oracle_metrics(raw, ds, content_only=True, per_case=True)[1]}

    run_quality(
        name=args.name, argv=sys.argv, work=args.work, make_raw=make_raw, make_raw_source_order=None,
        modalities=list(MODALITIES), encode_cfg={}, ingest_cfg={"cold_item_share": 0.1, "seed": args.data_seed},
        align_cfg={}, train_cfg={"epochs": args.epochs, "patience": args.patience},
        seeds=[int(s) for s in args.seeds.split(",")], fusions=[f for f in args.fusions.split(",") if f],
        oracle=oracles, threads=args.threads, reuse=args.reuse, cold_bias=args.cold_bias,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
