"""The one interface every scorer implements, so evaluation and A/B do not care what runs it, and the
one loop that ranks a set of cases with it.

A PyTorch model, an onnxruntime session over the exported graph, a Triton gRPC client and the
popularity baseline all rank the whole catalog for a batch of histories and return the top K.

Every ranker answers ``idx, score = ranker.topk(np.array([[0, 0, 5, 9]]), k=10)``.

Example:
    >>> left_pad([[5, 9], [1, 2, 3, 4]], 3).tolist()   # histories: left-padded, most recent kept
    [[0, 5, 9], [2, 3, 4]]
    >>> idx, score = ranker.topk(np.array([[0, 0, 5, 9]]), k=10)   # doctest: +SKIP
    >>> top = rank_cases(ranker, histories, k=100)                  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from fusionrec.progress import progress

EXCLUDE_PAD = -1  # padding of an exclusion list (item_idx are >= 1; 0 is the history padding)


@runtime_checkable
class TopKRanker(Protocol):
    """Ranks all items for each history (int64 [B, L], left-padded with 0, most recent last).

    Returns ``(item_idx int64 [B, k], score float32 [B, k])``, best first, with the items of
    each history and the padding index 0 excluded. A ranker may also take ``exclude`` (int64
    [B, E], padded with -1): further items per row never to return, e.g. the part of a user's
    consumed set older than the L items the sequence model reads; :func:`topk_excluding` gives
    that to every ranker.
    """

    max_len: int | None
    """The history length L it reads (longer histories keep their last L items); None: any."""
    k: int | None
    """The most items one call can return (an exported graph's K); None: the whole catalog."""

    def topk(self, histories: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def accepts(ranker, arg: str) -> bool:
    """Whether ``ranker.topk`` takes the keyword ``arg`` (``exclude``, ``events``)."""
    try:
        return arg in inspect.signature(ranker.topk).parameters
    except (TypeError, ValueError):
        return False


def event_vocabulary(ranker) -> list[str]:
    """The behaviour kinds a ranker reads (its ``event_kinds``; [] for one that reads none).

    A ranker that reads kinds takes ``events`` int64 [B, L] beside the histories: the kind id (1-based
    index into this list; 0 = padding or an unknown kind) of each history position.
    """
    kinds = getattr(ranker, "event_kinds", None)
    return list(kinds) if kinds and accepts(ranker, "events") else []


def exclusion_lists(sequences: Sequence[Sequence[int]] | Sequence[np.ndarray], min_width: int = 1) -> np.ndarray:
    """Distinct positive item_idx of each sequence as int64 [B, E], right-padded with -1 (E = longest, >= min_width)."""
    uniq = [np.unique(np.asarray(s, dtype=np.int64)) for s in sequences]
    uniq = [u[u > 0] for u in uniq]
    width = max([min_width, *(len(u) for u in uniq)])
    out = np.full((len(uniq), width), EXCLUDE_PAD, dtype=np.int64)
    for i, u in enumerate(uniq):
        out[i, : len(u)] = u
    return out


def accepts_exclude(ranker) -> bool:
    """Whether ``ranker.topk`` takes an ``exclude`` argument."""
    return accepts(ranker, "exclude")


def topk_excluding(ranker, histories: np.ndarray, k: int, exclude: np.ndarray | None,
                   events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``ranker`` with every item of ``exclude`` (int64 [B, E], -1 padded) left out.

    A ranker whose ``topk`` takes ``exclude`` does it itself (in its graph); for any other ranker the
    top ``k + E`` are fetched and the excluded items dropped, which is exact whenever the ranker can
    return that many items. ``events`` (kind ids parallel to ``histories``, see :func:`event_vocabulary`)
    go to a ranker that reads them.
    """
    kw = {"events": events} if events is not None and accepts(ranker, "events") else {}
    if exclude is None or exclude.shape[1] == 0:
        return ranker.topk(histories, k, **kw)
    exclude = np.asarray(exclude, dtype=np.int64)
    if accepts_exclude(ranker):
        return ranker.topk(histories, k, exclude=exclude, **kw)
    fetch = k + int((exclude > 0).sum(1).max())
    n_items = getattr(ranker, "n_items", None)
    if isinstance(n_items, int):
        fetch = min(fetch, n_items)
    idx, score = ranker.topk(histories, fetch, **kw)
    idx, score = np.asarray(idx, dtype=np.int64), np.asarray(score, dtype=np.float32)
    keep = ~(idx[:, :, None] == exclude[:, None, :]).any(2)
    out_i = np.zeros((len(idx), k), np.int64)
    out_s = np.zeros((len(idx), k), np.float32)
    for r in range(len(idx)):
        sel = np.flatnonzero(keep[r])[:k]
        if len(sel) < k:
            raise ValueError(f"ranker returned {len(sel)} items after exclusion, fewer than k={k}")
        out_i[r], out_s[r] = idx[r, sel], score[r, sel]
    return out_i, out_s


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


def pad_events(histories: np.ndarray, events: np.ndarray | None, length: int) -> np.ndarray:
    """Kind ids int64 [B, length] for a ranker of history length ``length``, kept in step with :func:`pad_histories`.

    ``events`` is parallel to ``histories`` (same shape); ``None`` gives all 0 (kinds unknown). A kind
    at a padding position of the history is dropped with it.
    """
    h = np.asarray(histories, dtype=np.int64)
    if events is None:
        return np.zeros((len(h), length), dtype=np.int64)
    e = np.asarray(events, dtype=np.int64)
    if e.shape != h.shape:
        raise ValueError(f"events must have the shape of the histories {h.shape}, got {e.shape}")
    if h.shape[1] != length:
        e = left_pad([er[hr > 0] for hr, er in zip(h, e)], length)
    else:
        e = np.where(h > 0, e, 0)
    return np.ascontiguousarray(e)


def rank_cases(ranker: TopKRanker, histories: np.ndarray, k: int, batch_size: int = 256, desc: str = "rank",
               exclude: np.ndarray | None = None, events: np.ndarray | None = None) -> np.ndarray:
    """Top-``k`` item_idx [n_cases, k] for every history, in batches (evaluation and A/B both rank here).

    ``exclude`` (int64 [n_cases, E], -1 padded): items each case must not get back, e.g. the user's whole
    consumed set (:meth:`fusionrec.data.dataset.DatasetArtifact.consumed_before`); see :func:`topk_excluding`.
    ``events``: kind ids parallel to ``histories``, for a ranker that reads them (:func:`event_vocabulary`).
    """
    n = len(histories)
    out = np.zeros((n, k), dtype=np.int64)
    for start in progress(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
        ex = None
        if exclude is not None:
            ex = exclude[start : start + batch_size]
            ex = ex[:, : max(1, int((ex >= 0).sum(1).max()))]  # trim the batch's padding columns
        ev = None if events is None else events[start : start + batch_size]
        idx, _ = topk_excluding(ranker, histories[start : start + batch_size], k, ex, ev)
        idx = np.asarray(idx, dtype=np.int64)
        if idx.shape != (min(batch_size, n - start), k):
            raise ValueError(f"{desc}: ranker returned shape {idx.shape}, expected {(min(batch_size, n - start), k)}")
        out[start : start + batch_size] = idx
    return out
