"""Behaviour kinds on the built-in demo catalog: the same models with and without reading the event kinds.

From scratch in its own work folder (nothing reused unless ``--reuse``): generate the catalog (its events
are view / play / complete / purchase, docs/demo-data.md), ingest, encode the four modalities, and per
seed: align, then train each model twice with the same seed, epoch budget and early stopping on
validation NDCG@10: without kinds (the default) and with ``use_events: true`` (an embedding per kind
added to each history position). Test is read once per model. Rows are means over seeds with 95%
intervals; the lift of kinds is a paired comparison on the same test cases (user-bootstrap interval of
the seed-averaged per-case difference and a t-interval over the per-seed differences): "beats" only
when both are above zero, "on par" when one crosses it. The generator's oracle with and without the
kinds gives the ceiling of what kinds can add.

    .venv/bin/python benchmarks/events.py                       # 3 seeds -> benchmarks/results/events.{json,md}
    .venv/bin/python benchmarks/events.py --seeds 0 --items 200 --users 150 --name events_smoke

The README's behaviour-kinds table is rendered from the JSON (benchmarks/readme_tables.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steps import demo_catalog, fresh_work  # noqa: E402
from protocol import RESULTS, SEGMENTS, Clock, _json_default, _row, add_demo_args, evaluate_frame, provenance, reuse_checker  # noqa: E402
from readme_tables import events_block  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_demo_args(ap)
    ap.add_argument("--models", default="fused,id", help="models trained with and without kinds (fused = attention fusion)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded)")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_events"))
    ap.add_argument("--reuse", action="store_true", help="reuse data/embedding/alignment artifacts in --work (recorded)")
    ap.add_argument("--name", default="events", help="result file stem under benchmarks/results/")
    args = ap.parse_args()

    import torch

    from fusionrec.compare import paired_difference
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.demo import DemoConfig, oracle_metrics
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.models.align import AlignConfig
    from fusionrec.models.align import run as align
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig
    from fusionrec.train import run as train

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = [m for m in args.models.split(",") if m]
    prov = provenance(sys.argv)
    work = args.work
    clock = Clock()
    cache = fresh_work(work, args.reuse)
    cached = reuse_checker(args.reuse, cache)
    demo_cfg = DemoConfig(n_items=args.items, n_users=args.users, events_per_user=args.events, seed=args.data_seed)
    raw, ds_path, emb_by = demo_catalog(work, demo_cfg, IngestConfig(cold_item_share=0.1, seed=args.data_seed), clock, cached)
    ds = DatasetArtifact(ds_path)
    embs = list(emb_by.values())
    with clock.step("oracles"):
        ceilings = {"oracle (generator's truth)": oracle_metrics(raw, ds_path, per_case=True)[1],
                    "oracle reading the last event's kind": oracle_metrics(raw, ds_path, per_case=True, with_kinds=True)[1]}

    frames: dict[str, list] = {}
    training: dict[str, list] = {}
    base = {"epochs": args.epochs, "patience": args.patience}
    for seed in seeds:
        aligned = work / f"aligned_s{seed}"
        with clock.step(f"align seed {seed}"):
            if not cached(aligned):
                align(ds_path, embs, aligned, AlignConfig(seed=seed))
        for model in models:
            for kinds in (False, True):
                name = f"{model} + kinds" if kinds else model
                out = work / "models" / f"{model}{'_kinds' if kinds else ''}_s{seed}"
                cfg = TrainConfig(model=model, fusion="attention", seed=seed, use_events=kinds, **base)
                with clock.step(f"train {name} seed {seed}"):
                    train(ds_path, aligned if model != "id" else None, out, cfg, force=True)
                m = load_model(out)
                frame, _ = evaluate_frame(m, ds, m.spec.max_len)
                frames.setdefault(name, []).append(frame)
                rec = json.loads((out / "metrics.json").read_text())["training"]
                training.setdefault(name, []).append({"seed": seed, "best_epoch": rec.get("best_epoch"),
                                                      "best_valid_ndcg10": rec.get("best_valid_ndcg10"),
                                                      "epochs_run": rec.get("epochs_run"), "fit_wall_seconds": rec.get("fit_wall_seconds"),
                                                      "sequences_per_second": rec.get("sequences_per_second")})

    users = next(iter(frames.values()))[0]["user_idx"].to_numpy()
    seg_of = next(iter(frames.values()))[0]["segment"].to_numpy()

    def compare(a: list, b: list, seg: str, metric: str = "ndcg@10") -> dict:
        m = np.ones(len(users), bool) if seg == "overall" else seg_of == seg
        return paired_difference(np.stack([f[metric].to_numpy()[m] for f in a]), np.stack([f[metric].to_numpy()[m] for f in b]),
                                 users[m])

    comparisons = [{"a": f"{model} + kinds", "b": model, "segment": seg, "metric": "ndcg@10",
                    **compare(frames[f"{model} + kinds"], frames[model], seg)} for model in models for seg in SEGMENTS]
    oracle_names = list(ceilings)
    comparisons.append({"a": oracle_names[1], "b": oracle_names[0], "segment": "overall", "metric": "ndcg@10",
                        **compare([ceilings[oracle_names[1]]], [ceilings[oracle_names[0]]], "overall")})
    rows = {k: {"seeds": seeds, "summary": _row(v), "training": training[k]} for k, v in frames.items()}
    rows.update({k: {"seeds": None, "summary": _row([f]), "training": None} for k, f in ceilings.items()})
    kinds_share = ds.events["event"].value_counts(normalize=True).round(4).to_dict()
    total = {"wall_s": round(sum(s["wall_s"] for s in clock.steps.values()), 1), "cpu_s": round(sum(s["cpu_s"] for s in clock.steps.values()), 1)}
    result = {
        "name": args.name, "provenance": prov, "seeds": seeds,
        "config": {"generator": demo_cfg.model_dump(mode="json"), "ingest": {"cold_item_share": 0.1, "seed": args.data_seed},
                   "train": {**base, "fusion": "attention", "models": models, "compared": "use_events false vs true, same seed"},
                   "threads": args.threads},
        "stats": {"n_items": ds.n_items, "n_users": ds.n_users, "event_kinds": ds.event_kinds, "event_share": kinds_share,
                  "test_cases": {seg: int((seg_of == seg).sum()) for seg in ("warm", "cold")}},
        "rows": rows, "comparisons": comparisons, "timings": clock.steps, "total": total,
        "cache": cache,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    (RESULTS / f"{args.name}.md").write_text(f"# Behaviour kinds ({args.name})\n\n{events_block(result)}\n")
    print(events_block(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
