"""Inference-time levers on item coverage, measured on VALIDATION: can a trained model show more of the catalog
without losing what it ranks well?

Every lever changes only the scores of a trained model (no retraining), so each is a per-item additive bias or an
item-table rescaling that an exported graph could carry:

- ``logit adjustment g``: score - g * log(1 + train count) (Menon et al. 2021, long-tail logit adjustment); items
  training never saw get the adjustment of a once-seen item (their prior is unknown, not zero).
- ``norm^-b``: item vectors divided by their norm to the power b (b = 1: cosine scoring).
- ``centre a``: user states minus a times their mean over training positions (removes the direction every list shares).
- ``cold bias``: ``train.with_cold_calibration``'s constant on items scored from content alone.

Cases: the validation cases plus the cold-valid cases of ``ablation.cold_valid`` (a seeded half of the cold test
items, never read for a test figure), so the lists span warm and cold histories like the A/B's test cases.
Coverage@10 is over the union of those lists, split by train-count band (``fusionrec.metrics.coverage_by_count``).

    .venv/bin/python benchmarks/coverage_levers.py --dataset W/dataset --model fused=W/fused --model id=W/id --out r.json

``benchmarks/ab_movielens.py`` runs it on the pipeline's own two models.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LOGIT_ADJUST = (0.1, 0.2, 0.3)
NORM_POWERS = (0.5, 1.0)
CENTRES = (0.25, 0.5)


class AdjustedRanker:
    """A trained ``Recommender``'s serving graph with its item table and/or per-item score offset replaced."""

    def __init__(self, model, k: int, item_table: torch.Tensor | None = None, offset: torch.Tensor | None = None):
        self.module = copy.deepcopy(model.serving_module(k))
        if item_table is not None:
            self.module.item_table = item_table
        if offset is not None:
            self.module.penalty = self.module.penalty + offset
        self.max_len, self.k, self.n_items = model.spec.max_len, k, model.n_items

    @torch.no_grad()
    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None):
        from fusionrec.models.recommender import _prepare_exclude, _prepare_histories

        h = _prepare_histories(histories, self.max_len)
        ex = _prepare_exclude(exclude, len(h), self.n_items) if exclude is not None else None
        idx, score = self.module(h, ex)
        return idx[:, :k].numpy(), score[:, :k].numpy()


@torch.no_grad()
def mean_training_state(model, ds, cfg, n_states: int = 4096) -> torch.Tensor:
    """The mean user state over a seeded sample of training target positions (as ``train.cold_calibration`` samples them)."""
    from fusionrec.train import train_windows

    X, Y, _, _ = train_windows(ds, cfg)
    X, Y = torch.from_numpy(X), torch.from_numpy(Y)
    pos = torch.nonzero(Y > 0)
    pos = pos[torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(pos))[:n_states])]
    table, _ = model.item_tables()
    states = [model.user_states(X[p[:, 0]], table)[torch.arange(len(p)), p[:, 1]] for p in pos.split(512)]
    return torch.cat(states).mean(0)


def levers(model, ds, cfg, k: int, counts: np.ndarray) -> dict[str, AdjustedRanker | object]:
    """Name -> ranker for the model as trained and under every lever (those that need content or an ID channel only where it has them)."""
    from fusionrec.train import with_cold_calibration

    out: dict = {"as trained": model}
    log_prior = torch.from_numpy(np.log1p(np.maximum(counts, 1)).astype(np.float32))
    for g in LOGIT_ADJUST:
        out[f"logit adjustment {g}"] = AdjustedRanker(model, k, offset=-g * log_prior)
    if model.user_gate is None:
        table = model.serving_module(k).item_table
        for b in NORM_POWERS:
            out[f"norm^-{b}"] = AdjustedRanker(model, k, item_table=table / table.norm(dim=1, keepdim=True).clamp_min(1e-6) ** b)
        centre = table @ mean_training_state(model, ds, cfg)
        for a in CENTRES:
            out[f"centre {a}"] = AdjustedRanker(model, k, offset=-a * centre)
    if model.id_emb is not None and model.spec.modalities:
        out["cold bias"] = with_cold_calibration(copy.deepcopy(model), ds, cfg)
    return out


def lever_table(models: dict[str, tuple], ds, max_len: int = 50) -> dict:
    """``models``: name -> (Recommender, its TrainConfig). Rows: validation NDCG@10, cold-valid NDCG@10, coverage@10."""
    from ablation import cold_valid

    from fusionrec.evaluate import evaluate
    from fusionrec.metrics import coverage_by_count, item_coverage

    valid = ds.eval_cases("valid", max_len)
    coldval, _, _ = cold_valid(ds.eval_cases("test", max_len))
    counts = ds.train_counts
    rows = []
    for name, (model, cfg) in models.items():
        for lever, ranker in levers(model, ds, cfg, 20, counts).items():
            v = evaluate(ranker, ds, "valid", ks=(10,), k_max=10, max_len=max_len, cases=valid)
            c = evaluate(ranker, ds, "test", ks=(10,), k_max=10, max_len=max_len, cases=coldval)
            lists = np.concatenate([v.topk[:, :10], c.topk[:, :10]])
            rows.append({"model": name, "lever": lever, "valid_ndcg@10": v.summary["overall"]["ndcg@10"],
                         "valid_warm_ndcg@10": v.summary["warm"]["ndcg@10"], "cold_valid_ndcg@10": c.summary["cold"]["ndcg@10"],
                         "coverage@10": item_coverage(lists, ds.n_items, 10), "never_trained_share_of_slots": float((counts[lists] == 0).mean()),
                         "coverage_by_train_count": coverage_by_count(lists, counts, 10)})
            r = rows[-1]
            print(f"{name:<8} {lever:<24} valid NDCG@10 {r['valid_ndcg@10']:.4f}  cold-valid {r['cold_valid_ndcg@10']:.4f}  "
                  f"coverage@10 {r['coverage@10']:.3f}  never-trained slots {r['never_trained_share_of_slots']:.3f}", flush=True)
    return {"cases": {"valid": int(len(valid[0])), "cold_valid": int(len(coldval[0]))}, "rows": rows}


def choose(table: dict, treatment: str, control: str, max_drop: float) -> dict | None:
    """The treatment's lever with the best validation NDCG@10 among those whose validation coverage@10 is within
    ``max_drop`` (relative) of the control as trained (the A/B coverage guardrail, read on validation); None if none is."""
    base = next(r for r in table["rows"] if r["model"] == control and r["lever"] == "as trained")
    ok = [r for r in table["rows"] if r["model"] == treatment and r["coverage@10"] >= (1 - max_drop) * base["coverage@10"]]
    return max(ok, key=lambda r: r["valid_ndcg@10"]) if ok else None


def markdown(table: dict) -> list[str]:
    lines = [f"Validation: {table['cases']['valid']} valid cases + {table['cases']['cold_valid']} cold-valid cases; coverage@10 over the union of their lists.",
             "", "| model | lever | valid NDCG@10 | cold-valid NDCG@10 | coverage@10 | never-trained slots | shown by train count |",
             "|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        bands = ", ".join(f"{b['band']}: {b['shown']}/{b['catalog']}" for b in r["coverage_by_train_count"])
        lines.append(f"| {r['model']} | {r['lever']} | {r['valid_ndcg@10']:.4f} | {r['cold_valid_ndcg@10']:.4f} | {r['coverage@10']:.3f} | "
                     f"{r['never_trained_share_of_slots']:.3f} | {bands} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH of a model artifact written by `fusionrec train`")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--note", default="", help="recorded in the JSON: how the models were made")
    args = ap.parse_args()
    from fusionrec.artifacts import read_manifest
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.models.recommender import load_model
    from fusionrec.train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    from protocol import provenance

    prov = provenance(sys.argv)
    models, paths = {}, {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        models[name] = (load_model(path), TrainConfig(**read_manifest(Path(path))["params"]))
        paths[name] = path
    table = lever_table(models, DatasetArtifact(args.dataset))
    table["git_commit"] = prov["git_commit"] + ("-dirty" if prov["git_dirty"] else "")  # also in provenance, with the rest
    table["provenance"] = {**prov, "dataset": str(args.dataset), "note": args.note,
                           "models": {n: {"path": paths[n], "train_config": models[n][1].model_dump(mode="json")} for n in models}}
    args.out.write_text(json.dumps(table, indent=1, default=str))
    args.out.with_suffix(".md").write_text("\n".join(markdown(table)) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
