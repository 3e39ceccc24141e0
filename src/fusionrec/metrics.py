"""Full-ranking metrics for leave-one-out cases (one relevant item per case).

Each case has one target; its rank is its 1-based position in the model's ranking of the whole
catalog (history items excluded). With only top-K lists kept, a target outside the top K has
rank 0 ("not found"): Recall/NDCG@k for k <= K are exact and MRR is MRR@K.

Example:
    >>> ranks = ranks_from_topk(np.array([[5, 3, 9]]), np.array([3]))
    >>> ranks
    array([2])
    >>> per_case_metrics(ranks, ks=(1, 2))["ndcg@2"]
    array([0.63092975])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_KS = (10, 20, 50)


def ranks_from_topk(topk_idx: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row of ``topk_idx`` [N, K]; 0 where it is absent."""
    topk_idx = np.asarray(topk_idx)
    targets = np.asarray(targets).reshape(-1, 1)
    hit = topk_idx == targets
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1) + 1, 0).astype(np.int64)


def per_case_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Recall@k, NDCG@k per case and reciprocal rank (MRR per case) from 1-based ranks (0 = not found)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    found = ranks > 0
    safe = np.where(found, ranks, 1.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = found & (ranks <= k)
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0)
    out["mrr"] = np.where(found, 1.0 / safe, 0.0)
    return out


def topk_metrics(topk_idx: np.ndarray, targets: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                 miss: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(ranks, per-case metrics)`` of every case's top-K list; ``miss`` forces those cases to rank 0.

    The one rank -> metrics step of evaluation and of both A/B arms.
    """
    ranks = ranks_from_topk(topk_idx, targets)
    if miss is not None:
        ranks[np.asarray(miss, dtype=bool)] = 0
    return ranks, per_case_metrics(ranks, ks)


def item_coverage(topk_idx: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalog's n_items that appears in at least one case's top-k list."""
    topk_idx = np.asarray(topk_idx)[:, :k]
    shown = np.unique(topk_idx[topk_idx > 0])
    return float(len(shown)) / float(n_items) if n_items else 0.0


COUNT_BANDS = (0, 1, 3, 10, 50)
"""Lower edges of the train-count bands of ``coverage_by_count``: never trained, 1-2, 3-9, 10-49, 50+ events."""


def count_bands(counts: np.ndarray, edges: Sequence[int] = COUNT_BANDS) -> dict[str, np.ndarray]:
    """Band label -> bool mask over ``counts`` (train events, of items or of each case's target), bands by lower ``edges``.

    Example:
        >>> {b: m.tolist() for b, m in count_bands(np.array([0, 2, 7, 60]), edges=(1, 3, 50)).items()}
        {'1-2': [False, True, False, False], '3-49': [False, False, True, False], '50+': [False, False, False, True]}
    """
    counts = np.asarray(counts)
    bounds = list(edges) + [None]
    return {(f"{lo}+" if hi is None else str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"):
            (counts >= lo) & (counts < hi if hi is not None else True) for lo, hi in zip(bounds[:-1], bounds[1:])}


def coverage_by_count(topk_idx: np.ndarray, item_counts: np.ndarray, k: int, edges: Sequence[int] = COUNT_BANDS) -> list[dict]:
    """Item coverage@k split by how often training saw the item: which part of the catalog a coverage change comes from.

    ``item_counts`` [n_items + 1] are train events per item_idx (row 0, padding, is ignored). One row per band
    (lower edges ``edges``): ``band`` label, ``catalog`` items in it, ``shown`` of them in at least one top-k list.
    The ``shown`` column sums to ``item_coverage(topk_idx, n_items, k) * n_items``.

    Example:
        >>> coverage_by_count(np.array([[1, 2], [1, 3]]), np.array([0, 5, 0, 1]), k=2, edges=(0, 1, 3))
        [{'band': '0', 'catalog': 1, 'shown': 1}, {'band': '1-2', 'catalog': 1, 'shown': 1}, {'band': '3+', 'catalog': 1, 'shown': 1}]
    """
    counts = np.asarray(item_counts)[1:]
    topk_idx = np.asarray(topk_idx)[:, :k]
    shown = np.zeros(len(counts), bool)
    shown[np.unique(topk_idx[topk_idx > 0]) - 1] = True
    return [{"band": label, "catalog": int(band.sum()), "shown": int((band & shown).sum())}
            for label, band in count_bands(counts, edges).items()]


def summarize(per_case: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean of each per-case metric (over ``mask`` when given); ``n`` is the number of cases."""
    out: dict[str, float] = {}
    for name, values in per_case.items():
        v = np.asarray(values)[mask] if mask is not None else np.asarray(values)
        out[name] = float(v.mean()) if len(v) else float("nan")
    n = int(np.asarray(mask).sum()) if mask is not None else len(next(iter(per_case.values()), []))
    out["n"] = n
    return out

