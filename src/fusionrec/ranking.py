"""The one interface every scorer implements, so evaluation and A/B do not care what runs it.

A PyTorch model, an onnxruntime session over the exported graph, a Triton gRPC client and the
popularity baseline all rank the whole catalog for a batch of histories and return the top K.

Every ranker answers ``idx, score = ranker.topk(np.array([[0, 0, 5, 9]]), k=10)``.

Example:
    >>> left_pad([[5, 9], [1, 2, 3, 4]], 3).tolist()   # histories: left-padded, most recent kept
    [[0, 5, 9], [2, 3, 4]]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class TopKRanker(Protocol):
    """Ranks all items for each history (int64 [B, L], left-padded with 0, most recent last).

    Returns ``(item_idx int64 [B, k], score float32 [B, k])``, best first, with the items of
    each history and the padding index 0 excluded.
    """

    def topk(self, histories: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def left_pad(sequences: list[list[int]] | list[np.ndarray], length: int) -> np.ndarray:
    """Left-pad (and left-truncate: keep the most recent) sequences into int64 [B, length]."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)[-length:] if length > 0 else np.zeros(0, np.int64)
        if len(seq):
            out[i, length - len(seq):] = seq
    return out
