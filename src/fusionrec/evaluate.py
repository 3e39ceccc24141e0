"""Full-ranking evaluation of any ``TopKRanker`` on a dataset artifact's valid/test cases.

Each case (one held-out event) is ranked against the whole catalog with every item the user
consumed before it excluded: the whole history, not only the last ``max_len`` items the sequence
model reads (``exclude_history=False`` restores the old, window-only exclusion for comparisons). Recall@K and NDCG@K for K <= ``k_max`` are exact; MRR is
MRR@``k_max``; item coverage@K is the share of the catalog appearing in at least one top-K
list. Figures are reported overall, for warm items and for cold-start items.

Re-consumption: a target that is already in the case's history can never be recommended
(history items are excluded), so such a case counts as a miss; ``summary[seg]["target_in_history"]``
says how many there were (0 on the default splits, which hold out each user's *last* event).

Example:
    >>> res = evaluate(load_model("artifacts/model"), DatasetArtifact("artifacts/dataset"))  # doctest: +SKIP
    >>> res.summary["overall"]["ndcg@10"], res.per_case.head()                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from fusionrec.artifacts import artifact_dir, atomic_write_json, check_output, save_parquet, write_manifest
from fusionrec.config import StepConfig
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.metrics import DEFAULT_KS, item_coverage, topk_metrics
from fusionrec.models.recommender import load_model
from fusionrec.ranking import TopKRanker, event_vocabulary, rank_cases

SEGMENTS = ("overall", "warm", "cold")


class EvalConfig(StepConfig):
    """Settings of the evaluate step (config section ``evaluate``)."""

    split: Literal["valid", "test"] = "test"
    ks: list[int] = list(DEFAULT_KS)
    k_max: int = Field(100, ge=1)
    max_len: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)
    device: str = "auto"
    exclude_history: bool = True  # False: exclude only the last max_len items (the pre-issue-13 protocol)


@dataclass
class EvalResult:
    """``summary[segment][metric]`` and ``per_case`` (one row per case, keyed by ``case_id``)."""

    summary: dict[str, dict[str, float]]
    per_case: pd.DataFrame
    topk: np.ndarray | None = field(default=None, repr=False)


def evaluate(
    ranker: TopKRanker,
    dataset,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    k_max: int = 100,
    max_len: int = 50,
    batch_size: int = 256,
    cases: tuple[pd.DataFrame, np.ndarray] | None = None,
    exclude_history: bool = True,
    exclude: np.ndarray | None = None,
) -> EvalResult:
    """Rank every ``split`` case of ``dataset`` (a ``DatasetArtifact`` or its path) with ``ranker``.

    ``cases`` may pass precomputed ``dataset.eval_cases(split, max_len)`` (training reuses it) and
    ``exclude`` precomputed ``dataset.consumed_before(cases)``.
    """
    if not isinstance(dataset, DatasetArtifact):
        dataset = DatasetArtifact(dataset)
    ks = sorted(int(k) for k in ks)
    if ks and ks[-1] > k_max:
        raise ValueError(f"every K must be <= k_max ({k_max}); got {ks}")
    df, histories = cases if cases is not None else dataset.eval_cases(split, max_len)
    n_items = int(getattr(ranker, "n_items", dataset.n_items))
    k_eff = min(k_max, n_items)
    if exclude is None and exclude_history:
        exclude = dataset.consumed_before(df)
    kinds = event_vocabulary(ranker)  # a ranker that reads behaviour kinds gets each history's, in its vocabulary
    events = dataset.history_kinds(df, histories.shape[1], kinds) if kinds else None
    top = rank_cases(ranker, histories, k_eff, batch_size, desc=f"evaluate {split}", exclude=exclude if exclude_history else None,
                     events=events)
    targets = df["item_idx"].to_numpy(np.int64)
    in_hist = (histories == targets[:, None]).any(1)
    if exclude_history:
        in_hist |= (exclude == targets[:, None]).any(1)
    ranks, metrics = topk_metrics(top, targets, ks, miss=in_hist)
    per_case = pd.DataFrame({
        "case_id": df["case_id"].to_numpy(np.int64),
        "user_idx": df["user_idx"].to_numpy(np.int64),
        "item_idx": targets,
        "segment": df["segment"].astype(str).to_numpy(),
        "rank": ranks,
        "target_in_history": in_hist,
        **metrics,
    })
    summary: dict[str, dict[str, float]] = {}
    seg = per_case["segment"].to_numpy()
    for name in SEGMENTS:
        mask = np.ones(len(per_case), bool) if name == "overall" else seg == name
        s = {m: (float(v[mask].mean()) if mask.any() else float("nan")) for m, v in metrics.items()}
        for k in ks:
            s[f"coverage@{k}"] = item_coverage(top[mask], n_items, k) if mask.any() else float("nan")
        s["n"] = int(mask.sum())
        s["target_in_history"] = int(in_hist[mask].sum())
        summary[name] = s
    return EvalResult(summary, per_case, top)


def summary_table(rows: dict[str, dict[str, dict[str, float]]], ks: Sequence[int] = (10, 20), segments=SEGMENTS) -> str:
    """A Markdown table: one row per (name, segment) with Recall/NDCG@ks, MRR, coverage@ks, n."""
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"] + [f"coverage@{k}" for k in ks] + ["n"]
    lines = ["| model | segment | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for name, summary in rows.items():
        for seg in segments:
            if seg not in summary:
                continue
            vals = []
            for c in cols:
                v = summary[seg].get(c, float("nan"))
                vals.append(str(int(v)) if c == "n" else f"{v:.4f}")
            lines.append(f"| {name} | {seg} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def run(dataset: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, cfg: EvalConfig | None = None,
        force: bool = False) -> Path:
    """Evaluate a model artifact on ``cfg.split`` and write an ``evaluation`` artifact (metrics.json + per_case.parquet)."""
    cfg = cfg or EvalConfig()
    out = Path(out)
    check_output(out, "evaluation", [dataset, model], force)
    ds = DatasetArtifact(dataset)
    ranker = load_model(model, device=cfg.device)
    if ranker.n_items != ds.n_items:  # its item_idx would point at other items: metrics would be noise
        raise ValueError(f"model {model} has {ranker.n_items} items, dataset {dataset} has {ds.n_items}: was it trained on another dataset?")
    res = evaluate(ranker, ds, cfg.split, cfg.ks, cfg.k_max, cfg.max_len, cfg.batch_size, exclude_history=cfg.exclude_history)
    with artifact_dir(out, "evaluation", [dataset, model], force) as tmp:
        atomic_write_json(tmp / "metrics.json", {"split": cfg.split, "summary": res.summary})
        save_parquet(res.per_case, tmp / "per_case.parquet")
        write_manifest(tmp, step="evaluate", kind="evaluation", params=cfg, inputs={"dataset": Path(dataset), "model": Path(model)})
    return out
