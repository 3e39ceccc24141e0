"""The one interface every scorer implements, so evaluation and A/B do not care what runs it, and the
one loop that ranks a set of cases with it.

A PyTorch model, an onnxruntime session over the exported graph, a Triton gRPC client and the
popularity baseline all rank the whole catalog for a batch of histories and return the top K.

Example:
    >>> idx, score = ranker.topk(np.array([[0, 0, 5, 9]]), k=10)   # doctest: +SKIP
    >>> top = rank_cases(ranker, histories, k=100)                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fusionrec.progress import progress


@runtime_checkable
class TopKRanker(Protocol):
    """Ranks all items for each history (int64 [B, L], left-padded with 0, most recent last).

    Returns ``(item_idx int64 [B, k], score float32 [B, k])``, best first, with the items of
    each history and the padding index 0 excluded.
    """

    max_len: int | None
    """The history length L it reads (longer histories keep their last L items); None: any."""
    k: int | None
    """The most items one call can return (an exported graph's K); None: the whole catalog."""

    def topk(self, histories: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def left_pad(sequences: list[list[int]] | list[np.ndarray], length: int) -> np.ndarray:
    """Left-pad (and left-truncate: keep the most recent) sequences into int64 [B, length]."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)[-length:] if length > 0 else np.zeros(0, np.int64)
        if len(seq):
            out[i, length - len(seq):] = seq
    return out


def pad_histories(histories: np.ndarray, length: int) -> np.ndarray:
    """int64 [B, length] histories for a ranker of history length ``length``.

    Rows of another length keep their most recent non-padding items (left-padded with 0);
    rows already ``length`` long are passed through.
    """
    h = np.asarray(histories, dtype=np.int64)
    if h.ndim != 2:
        raise ValueError(f"histories must be int64 [batch, length], got shape {h.shape}")
    if h.shape[1] != length:
        h = left_pad([row[row > 0] for row in h], length)
    return np.ascontiguousarray(h)


def rank_cases(ranker: TopKRanker, histories: np.ndarray, k: int, batch_size: int = 256, desc: str = "rank") -> np.ndarray:
    """Top-``k`` item_idx [n_cases, k] for every history, in batches (evaluation and A/B both rank here)."""
    n = len(histories)
    out = np.zeros((n, k), dtype=np.int64)
    for start in progress(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
        idx, _ = ranker.topk(histories[start : start + batch_size], k)
        idx = np.asarray(idx, dtype=np.int64)
        if idx.shape != (min(batch_size, n - start), k):
            raise ValueError(f"{desc}: ranker returned shape {idx.shape}, expected {(min(batch_size, n - start), k)}")
        out[start : start + batch_size] = idx
    return out
