"""Where does the fused model's warm gain come from? A saved ablation's per-case validation NDCG@10, split by how
often training saw each case's target movie (issue 14: "show the ablations that say why").

It reads the seed-pooled per-case arrays an ``ablation.py`` run saved (no model is trained or scored here; test is
not read), rebuilds the dataset they were scored on from scratch (``fusionrec datasets movielens`` + ingest with
the config's ``ingest`` section, both deterministic), checks that its validation cases are the JSON's case for case,
and compares two variants on the warm cases of each train-count band. The bands are the A/B report's
(``fusionrec.metrics.COUNT_BANDS``: 1-2, 3-9, 10-49, 50+ train events; 0 is cold).

    .venv/bin/python benchmarks/warm_by_train_count.py      # -> benchmarks/results/warm_by_train_count_ml.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from _steps import fresh_work  # noqa: E402
from ablation import paired  # noqa: E402
from protocol import RESULTS, provenance  # noqa: E402

from fusionrec.metrics import COUNT_BANDS, count_bands  # noqa: E402

WARM_BANDS = COUNT_BANDS[1:]  # the A/B report's train-count bands without the never-trained one (cold cases)


def by_train_count(per_case: dict, train_counts: np.ndarray, a: str, b: str) -> dict:
    """``a`` vs ``b`` (``ablation.paired``) on the warm cases of each band of ``train_counts`` (one per case)."""
    out = {}
    for label, band in count_bands(train_counts, WARM_BANDS).items():
        sub = {n: {**pc, "segment": np.where(band & (pc["segment"] == "warm"), "bin", "other")} for n, pc in per_case.items()}
        out[label] = paired(sub, a, b, "bin")
    out["all warm"] = paired(per_case, a, b, "warm")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ablation", type=Path, default=RESULTS / "ablation_ml_3seeds_iddrop_la.json",
                    help="an ablation.py JSON with per_case_valid (default: %(default)s)")
    ap.add_argument("--a", default="fused:iddrop0.1", help="treatment variant (default: %(default)s, configs/movielens.yaml's fused model)")
    ap.add_argument("--b", default="id", help="reference variant (default: %(default)s)")
    ap.add_argument("--config", type=Path, default=ROOT.parent / "configs" / "movielens.yaml", help="its ingest section splits the data")
    ap.add_argument("--work", type=Path, default=Path("artifacts/bench_warm_by_train_count"), help="work folder (a benchmark's own)")
    ap.add_argument("--name", default="warm_by_train_count_ml", help="results go to benchmarks/results/<name>.{json,md}")
    args = ap.parse_args(argv)

    from fusionrec.config import load_config
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest
    from fusionrec.data.movielens import MovieLensConfig, convert

    t0 = time.perf_counter()
    prov = provenance(argv if argv is not None else sys.argv)
    abl = json.loads(args.ablation.read_text())
    if "per_case_valid" not in abl or args.a not in abl["per_case_valid"] or args.b not in abl["per_case_valid"]:
        raise SystemExit(f"{args.ablation} has no per-case validation arrays for {args.a!r} and {args.b!r}")
    cache = fresh_work(args.work.resolve(), reuse=False)
    raw = convert(args.work / "raw", MovieLensConfig())
    ds = DatasetArtifact(ingest(raw, args.work / "dataset", load_config(IngestConfig, args.config, "ingest")))
    cases, _ = ds.eval_cases("valid")
    if cases["case_id"].astype(int).tolist() != abl["valid_case_ids"]:
        raise SystemExit(f"the rebuilt validation cases differ from {args.ablation}'s: another split or data version")
    per_case = {n: {k: np.asarray(v) for k, v in pc.items()} for n, pc in abl["per_case_valid"].items() if n in (args.a, args.b)}
    counts = ds.train_counts[cases["item_idx"].to_numpy()]
    table = by_train_count(per_case, counts, args.a, args.b)
    warm = per_case[args.b]["segment"] == "warm"
    share = {label: int((band & warm).sum()) for label, band in count_bands(counts, WARM_BANDS).items()}

    lines = [f"# Warm validation NDCG@10 by the target's train events: {args.a} vs {args.b}", "",
             f"From `{args.ablation.name}` (seeds {abl['seeds']}, per-case values pooled over seeds; its commit "
             f"{str(abl.get('git_commit'))[:10]}); dataset rebuilt at {prov['git_commit'][:10]}. Validation only.", "",
             f"| target's train events | warm cases | {args.b} | {args.a} | difference [95% CI] | ratio | verdict |",
             "|---|---|---|---|---|---|---|"]
    for label, c in table.items():
        lines.append(f"| {label} | {c['n']} | {c['b']:.4f} | {c['a']:.4f} | {c['diff']:+.4f} [{c['diff_ci95'][0]:+.4f}, "
                     f"{c['diff_ci95'][1]:+.4f}] | {'x%.2f' % c['ratio'] if c['ratio'] else '-'} | {c['verdict']} |")
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"name": args.name, "provenance": {**prov, "cache": cache, "wall_s": round(time.perf_counter() - t0, 1)},
           "source": {"ablation": str(args.ablation.relative_to(ROOT.parent) if args.ablation.is_relative_to(ROOT.parent) else args.ablation),
                      "git_commit": abl.get("git_commit"), "seeds": abl["seeds"]},
           "a": args.a, "b": args.b, "bins": list(share), "warm_cases_per_bin": share, "table": table}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    (RESULTS / f"{args.name}.md").write_text(text + "\n")
    print(f"written to {RESULTS / (args.name + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
