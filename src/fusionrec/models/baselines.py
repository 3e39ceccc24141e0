"""Floors that need no training: a uniformly random ranking (its expected value) and content-kNN.

Every quality table carries them (docs/evaluation.md): a trained model that does not beat the
random floor has learnt nothing, and a content model that does not beat content-kNN on cold
items has not used the content better than a cosine does.

- **Random ranking.** Its metrics are computed exactly, not sampled: with ``C`` candidate items
  (the catalog minus the case's excluded history) the target is at each rank with probability
  ``1/C``, so E[Recall@k] = min(k, C)/C, E[NDCG@k] = sum_{r<=k} 1/log2(r+1) / C and
  E[MRR@K] = sum_{r<=K} 1/r / C.
- **Content-kNN.** An item's content vector is the concatenation of its raw encoder embeddings
  (each modality L2-normalised, a missing modality zeros), L2-normalised; the user vector is the
  mean of the history items' vectors; the score is the cosine. Items with no content at all score
  lowest. It ranks cold items exactly as it ranks warm ones.

Example:
    >>> knn = ContentKNNRanker.from_embeddings([Path("artifacts/emb/text")], n_items=2000)   # doctest: +SKIP
    >>> idx, score = knn.topk(histories, k=10, exclude=dataset.consumed_before(cases))      # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrec.artifacts import load_npy, read_manifest

NO_CONTENT = -2.0  # below any cosine: items with no content vector come last


def random_expected_metrics(n_candidates: np.ndarray, ks: Sequence[int], k_max: int = 100) -> dict[str, np.ndarray]:
    """Per-case expected Recall@k, NDCG@k and MRR@k_max of a uniformly random ranking over ``n_candidates`` items."""
    c = np.maximum(np.asarray(n_candidates, dtype=np.float64), 1.0)
    ranks = np.arange(1, max([k_max, *ks]) + 1, dtype=np.float64)
    disc = np.cumsum(1.0 / np.log2(ranks + 1.0))
    harm = np.cumsum(1.0 / ranks)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        kk = np.minimum(k, c).astype(np.int64)
        out[f"recall@{k}"] = kk / c
        out[f"ndcg@{k}"] = disc[kk - 1] / c
    out["mrr"] = harm[np.minimum(k_max, c).astype(np.int64) - 1] / c
    return out


def n_candidates(n_items: int, histories: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """Items left to rank per case: the catalog minus the distinct items of the history window and ``exclude``."""
    out = np.zeros(len(histories), np.int64)
    for i, h in enumerate(histories):
        banned = set(h[h > 0].tolist())
        if exclude is not None:
            banned |= set(exclude[i][exclude[i] > 0].tolist())
        out[i] = n_items - len(banned)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ContentKNNRanker:
    """Cosine between each item's content vector and the mean of the history's (a TopKRanker, no training)."""

    def __init__(self, item_vectors: np.ndarray, has_content: np.ndarray, modalities: Sequence[str] = ()):
        self.vectors = _unit(np.asarray(item_vectors, dtype=np.float32))
        self.has_content = np.asarray(has_content, bool).copy()
        self.has_content[0] = False
        self.vectors[~self.has_content] = 0.0
        self.modalities = list(modalities)
        self.n_items = int(len(self.vectors) - 1)

    @classmethod
    def from_embeddings(cls, embeddings: Sequence[str | os.PathLike], n_items: int) -> "ContentKNNRanker":
        """From encode-step artifacts (``embeddings.npy`` [n_items+1, d] + ``mask.npy``), one per modality."""
        parts, present, mods = [], np.zeros(n_items + 1, bool), []
        for p in embeddings:
            p = Path(p)
            mods.append(str(read_manifest(p, kind="embeddings").get("modality") or p.name))
            emb = load_npy(p / "embeddings.npy").astype(np.float32)
            mask = load_npy(p / "mask.npy").astype(bool) if (p / "mask.npy").exists() else np.ones(len(emb), bool)
            if len(emb) != n_items + 1:
                raise ValueError(f"{p}: {len(emb)} rows, expected n_items+1 = {n_items + 1}")
            mask = mask & np.isfinite(emb).all(1)
            parts.append(np.where(mask[:, None], _unit(np.nan_to_num(emb)), 0.0))
            present |= mask
        if not parts:
            raise ValueError("content-kNN needs at least one embeddings artifact")
        return cls(np.concatenate(parts, 1), present, mods)

    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(histories, dtype=np.int64)
        k = min(int(k), self.n_items)
        user = _unit(self.vectors[h].sum(1))  # padding row 0 is zeros, so this is the mean direction of the history
        scores = user @ self.vectors.T
        scores[:, ~self.has_content] = NO_CONTENT
        rows = np.arange(len(h))[:, None]
        scores[:, 0] = -np.inf
        scores[rows, h] = -np.inf
        if exclude is not None:
            ex = np.asarray(exclude, dtype=np.int64)
            scores[rows, np.maximum(ex, 0)] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(scores, part, 1)
        order = np.lexsort((part, -top), axis=1)  # score descending, ties by item_idx: deterministic
        idx = np.take_along_axis(part, order, 1)
        return idx.astype(np.int64), np.take_along_axis(scores, idx, 1).astype(np.float32)
