"""gRPC client of a served fusionrec model (``tritonclient.grpc``, sync and asyncio).

External item ids in and out (``item_ids.json`` of the model repository), an empty history gets
the popularity fallback (``popular.json``) without calling the model, unknown ids raise a clear
``ValueError`` before anything is sent, every call has a deadline, and UNAVAILABLE is retried a
bounded number of times with backoff. ``RecommendClient.topk`` makes it a
``fusionrec.ranking.TopKRanker`` over item_idx arrays (the A/B replay uses that).

Example:
    >>> from fusionrec.serving.client import RecommendClient
    >>> client = RecommendClient("127.0.0.1:8001", model="fusionrec", repo="artifacts/repo")   # doctest: +SKIP
    >>> client.recommend(["m12", "m7"], k=5)                                                    # doctest: +SKIP
    [('m33', 4.21), ('m2', 3.97), ...]
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrec.model_repository import (EVENTS, HISTORY, INPUTS, INVALID_IDX, ITEM_IDX, OUTPUT_NAMES, SCORE, ModelRepository, feeds,
                                        kind_ids)
from fusionrec.query import MIX_UNTIL, RRF_C, QueryTokenizer, check_query, mix_rankings, query_weight
from fusionrec.ranking import exclusion_lists, left_pad

from .config import read_model_config

Recommendation = list[tuple[str, float]]


class _Base:
    def __init__(self, url: str = "127.0.0.1:8001", model: str = "fusionrec", repo: str | os.PathLike | None = None,
                 item_ids: Sequence[str] | None = None, popular: Sequence[int] | None = None,
                 max_len: int | None = None, max_batch_size: int | None = None, timeout_s: float = 10.0,
                 retries: int = 3, backoff_s: float = 0.2):
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.k: int | None = None
        """The most items one call returns (the graph's K)."""
        self.max_len = max_len
        """History length of the served graph (histories of another length are re-padded)."""
        self.max_batch_size = max_batch_size
        self.event_kinds: list[str] = []
        """The behaviour kinds the served model reads (from the repository); [] when it reads none or no repo was given."""
        popular_counts: list[float] = []
        self.repo = Path(repo) if repo is not None else None
        if repo is not None:
            mrepo = ModelRepository(repo, model)
            self.max_len = self.max_len or mrepo.max_len
            self.k = mrepo.k
            self.event_kinds = mrepo.event_kinds
            self.max_batch_size = self.max_batch_size or read_model_config(mrepo.model_dir / "config.pbtxt").max_batch_size
            if item_ids is None:
                item_ids = mrepo.item_ids
            pop = mrepo.popular if popular is None else None
            if pop is not None:
                popular, popular_counts = pop["item_idx"], [float(c) for c in pop.get("count", [])]
        self.item_ids = list(item_ids) if item_ids is not None else None
        self._index = {str(x): i for i, x in enumerate(self.item_ids)} if self.item_ids else {}
        self._index.pop("", None)
        self.popular = np.asarray(popular if popular is not None else [], dtype=np.int64)
        self.popular_score = np.asarray(popular_counts or [0.0] * len(self.popular), dtype=np.float32)

    # -- id mapping --------------------------------------------------------------------------
    def to_idx(self, history: Sequence[str]) -> list[int]:
        """External ids -> item_idx; a ``ValueError`` listing every unknown id."""
        if self.item_ids is None:
            raise ValueError("this client has no item id map: pass repo= (the model repository) or item_ids=")
        unknown = [h for h in history if str(h) not in self._index]
        if unknown:
            raise ValueError(f"unknown item id(s) for model '{self.model}': {', '.join(map(repr, unknown[:10]))}"
                             + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        return [self._index[str(h)] for h in history]

    def to_ids(self, idx: np.ndarray, score: np.ndarray) -> Recommendation:
        assert self.item_ids is not None
        return [(self.item_ids[int(i)], float(s)) for i, s in zip(idx, score)]

    def _set_meta(self, cfg) -> None:
        """Take what the repository did not give from the served model's configuration (``ModelConfig``)."""
        self.max_len = self.max_len or int(next(i for i in cfg.input if i.name == HISTORY).dims[0])
        self.k = self.k or int(next(o for o in cfg.output if o.name == ITEM_IDX).dims[0])
        self.max_batch_size = self.max_batch_size or int(cfg.max_batch_size)

    def to_kinds(self, histories: Sequence[Sequence[str]], events: Sequence[Sequence[str | None]] | None) -> list[list[int]] | None:
        """Behaviour kind names per history position -> EVENTS ids (None: none given, or the model reads no kinds).

        A list of kinds must be as long as its history; a kind the model does not know is a ``ValueError``
        naming the ones it does (None is allowed: unknown).
        """
        if events is None or not self.event_kinds:
            return None
        if len(events) != len(histories) or any(len(e) != len(h) for e, h in zip(events, histories)):
            raise ValueError("events must give one behaviour kind per history item (same lengths as the histories)")
        unknown = sorted({str(k) for e in events for k in e if k is not None and k not in self.event_kinds})
        if unknown:
            raise ValueError(f"unknown behaviour kind(s) {unknown} for model '{self.model}'; it knows {self.event_kinds}")
        return [kind_ids(e, self.event_kinds).tolist() for e in events]

    def _consumed(self, histories: Sequence[Sequence[str]], consumed: Sequence[Sequence[str]] | None) -> np.ndarray:
        """EXCLUDE for external-id histories: every id of each (whole) history plus ``consumed``, -1 padded."""
        rows = [self.to_idx(h) + (self.to_idx(consumed[i]) if consumed is not None else []) for i, h in enumerate(histories)]
        return exclusion_lists(rows)

    def _start(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None, events: np.ndarray | None = None
               ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """The graph inputs (histories re-padded to ``max_len``, ``exclude`` as EXCLUDE, ``events`` as EVENTS), output
        arrays with empty histories already filled by the fallback, and the rows that still need the model."""
        h = np.asarray(histories, dtype=np.int64)
        if h.ndim != 2:
            raise ValueError(f"histories must be int64 [batch, length], got shape {h.shape}")
        if self.k is not None and k > self.k:
            raise ValueError(f"k={k} but model '{self.model}' was exported with top-{self.k}")
        feed = feeds(h, self.max_len if self.max_len is not None else h.shape[1], exclude, events)
        if events is None:  # left out: the server fills "unknown" (and a graph exported before EVENTS still answers)
            feed.pop(EVENTS)
        empty = ~(feed[HISTORY] > 0).any(axis=1)
        idx = np.zeros((len(empty), k), np.int64)
        score = np.zeros((len(empty), k), np.float32)
        if empty.any():
            idx[empty], score[empty] = self._fallback(int(empty.sum()), k)
        return feed, idx, score, np.where(~empty)[0]

    def _fallback(self, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.popular) < k:
            raise ValueError(f"empty history and the popularity fallback holds only {len(self.popular)} items (< k={k}); "
                             "pass repo= so popular.json is used")
        return np.tile(self.popular[:k], (n, 1)), np.tile(self.popular_score[:k], (n, 1))

    @staticmethod
    def _check_rows(idx: np.ndarray, offset: int) -> None:
        bad = np.where((idx == INVALID_IDX).all(axis=1))[0]
        if len(bad):
            raise ValueError(f"the server rejected history row(s) {[int(b) + offset for b in bad[:10]]}: "
                             "an item_idx is outside [0, n_items] for this model")

    def _chunks(self, n: int) -> list[slice]:
        step = self.max_batch_size or n or 1
        return [slice(s, min(n, s + step)) for s in range(0, n, step)]

    @staticmethod
    def _inputs(feed: dict[str, np.ndarray], rows: np.ndarray, grpc):
        """The request tensors for ``rows`` of the graph inputs (one ``InferInput`` per ``INPUTS`` entry in ``feed``;
        an optional input left out of ``feed`` is filled by the server)."""
        inputs = []
        for spec in INPUTS:
            if spec.name not in feed and spec.optional:
                continue
            data = np.ascontiguousarray(feed[spec.name][rows])
            inp = grpc.InferInput(spec.name, list(data.shape), spec.triton_datatype)
            inp.set_data_from_numpy(data)
            inputs.append(inp)
        return inputs, [grpc.InferRequestedOutput(name) for name in OUTPUT_NAMES]

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        status = str(getattr(exc, "status", lambda: "")() or "")
        return "UNAVAILABLE" in status or "UNAVAILABLE" in str(exc)[:200]

    @staticmethod
    def _timeout(exc: Exception) -> bool:
        status = str(getattr(exc, "status", lambda: "")() or "")
        return "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in str(exc)

    # -- companions, shared by both clients (no network here) ----------------------------------
    def _companion_dir(self, suffix: str, what: str) -> Path:
        from fusionrec.model_repository import companion_dir

        mdir = companion_dir(self.repo, self.model, suffix) if self.repo is not None else None
        if mdir is None:
            raise ValueError(f"{what} needs the model repository (repo=) holding '{self.model}{suffix}': "
                             f"{'no repository given' if self.repo is None else f'{self.repo} has none'}"
                             + (" (export the model with --aligned ALIGNED so the text query model is written)"
                                if suffix.endswith("query") else ""))
        return mdir

    def _named_request(self, arrays: dict[str, np.ndarray], outputs: list[str]) -> tuple[list, list]:
        """``InferInput``s for ``arrays`` (Triton type from the dtype) and the ``outputs`` to request."""
        from fusionrec.model_repository import GraphTensor

        inputs = []
        for name, data in arrays.items():
            data = np.ascontiguousarray(data)
            inp = self._grpc.InferInput(name, list(data.shape), GraphTensor(name, str(data.dtype), ()).triton_datatype)
            inp.set_data_from_numpy(data)
            inputs.append(inp)
        return inputs, [self._grpc.InferRequestedOutput(n) for n in outputs]

    def _query_model(self) -> tuple[str, QueryTokenizer, int]:
        """(served name, tokenizer, K) of ``<model>_query``; the tokenizer files it ships are loaded once."""
        from fusionrec.artifacts import read_json
        from fusionrec.model_repository import QUERY_SUFFIX

        mdir = self._companion_dir(QUERY_SUFFIX, "a text query")
        if getattr(self, "_query_tok", None) is None:
            report = read_json(mdir / "export_report.json")
            self._query_tok = (QueryTokenizer(mdir / "tokenizer", int(report["max_tokens"])), int(report["k"]))
        tok, k_max = self._query_tok
        return mdir.name, tok, k_max

    def _query_request(self, queries: Sequence[str], k: int
                       ) -> tuple[str, list[tuple[slice, dict[str, np.ndarray]]], np.ndarray, np.ndarray]:
        """Check and tokenize ``queries`` (``QueryError`` before anything is sent): the served name, one
        ``(rows, inputs)`` per request, and the output arrays to fill (:meth:`_query_fill`)."""
        from fusionrec.model_repository import ATTENTION_MASK, INPUT_IDS

        name, tok, k_max = self._query_model()
        if k > k_max:
            raise ValueError(f"k={k} but '{name}' was exported with top-{k_max}")
        ids, mask = tok(list(queries))
        idx = np.zeros((len(ids), k), np.int64)
        score = np.zeros((len(ids), k), np.float32)
        return name, [(sl, {INPUT_IDS: ids[sl], ATTENTION_MASK: mask[sl]}) for sl in self._chunks(len(ids))], idx, score

    def _query_fill(self, idx: np.ndarray, score: np.ndarray, sl: slice, out: dict[str, np.ndarray]) -> None:
        self._check_rows(out[ITEM_IDX], sl.start)
        k = idx.shape[1]
        idx[sl], score[sl] = out[ITEM_IDX][:, :k], out[SCORE][:, :k]

    def _query_plan(self, text: str, k: int, history: Sequence[str] | None, mix: bool, mix_until: int, rrf_c: float
                    ) -> tuple[str, int, int]:
        """How :meth:`query` answers: ``("query" | "sequence" | "mix", query list depth, sequence list depth)``.

        No history: the query's list. A history and no ``mix``, or ``mix`` and at least ``mix_until``
        events: the sequential model's. ``mix`` and a shorter history: both lists, ``k + len(history)``
        deep (within each model's K), merged by ``fusionrec.query.mix_rankings``. Bad input (unknown
        history ids, a bad query, ``mix_until`` < 1, ``rrf_c`` <= 0) raises here, before anything is sent.
        """
        history = list(history or [])
        if mix:
            query_weight(len(history), mix_until)  # checks mix_until
            if not rrf_c > 0:
                raise ValueError(f"the reciprocal-rank-fusion constant rrf_c must be > 0, got {rrf_c!r}")
        if history:
            self.to_idx(history)
        if history and not (mix and len(history) < mix_until):
            return "sequence", 0, k
        if self.item_ids is None:
            raise ValueError("this client has no item id map: pass repo= (the model repository)")
        check_query(text)
        if not history:
            return "query", k, 0
        name, _, k_max = self._query_model()
        if k > k_max:
            raise ValueError(f"k={k} but '{name}' was exported with top-{k_max}")
        if self.k is not None and k > self.k:
            raise ValueError(f"k={k} but model '{self.model}' was exported with top-{self.k}")
        depth = k + len(history)
        return "mix", min(depth, k_max), min(depth, self.k) if self.k else depth

    @staticmethod
    def _mixed(query_recs: Recommendation, sequence_recs: Recommendation, history: Sequence[str], k: int,
               mix_until: int, rrf_c: float) -> Recommendation:
        recs = mix_rankings([i for i, _ in query_recs], [i for i, _ in sequence_recs], [str(h) for h in history], k,
                            mix_until, rrf_c)
        if len(recs) < k:  # the sequential list alone holds k items outside the history: only a broken server gets here
            raise ValueError(f"the mixed list holds {len(recs)} items outside the history (< k={k})")
        return recs


class RecommendClient(_Base):
    """Synchronous client (``tritonclient.grpc``); a ``TopKRanker``.

    Example:
        >>> RecommendClient(model="fusionrec", repo="artifacts/repo").recommend([], k=3)   # popular items  # doctest: +SKIP
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "fusionrec", repo: str | os.PathLike | None = None, **kw):
        super().__init__(url, model, repo, **kw)
        import tritonclient.grpc as grpc

        self._grpc = grpc
        self._client = grpc.InferenceServerClient(url)
        if self.max_len is None or self.max_batch_size is None:
            self._set_meta(self._call(lambda: self._client.get_model_config(model, client_timeout=self.timeout_s)).config)

    def _call(self, fn):
        from tritonclient.utils import InferenceServerException

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except InferenceServerException as exc:
                if self._timeout(exc):
                    raise TimeoutError(f"model '{self.model}' at {self.url} did not answer within {self.timeout_s}s") from exc
                if not self._retryable(exc) or attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2 ** attempt)

    def _infer(self, feed: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs, outputs = self._inputs(feed, rows, self._grpc)
        res = self._call(lambda: self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s))
        return res.as_numpy(ITEM_IDX), res.as_numpy(SCORE)

    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None, explain: bool = False,
             events: np.ndarray | None = None):
        """item_idx histories [B, L] -> (item_idx [B, k], score [B, k]); empty rows get the popularity fallback.

        ``exclude`` (int64 [B, E], -1 padded): further item_idx per row the server must not return (the
        user's consumed items older than the last ``max_len``), sent as the graph's EXCLUDE input.
        ``events`` (int64 [B, L], parallel to ``histories``): behaviour kind ids into ``event_kinds``, sent as EVENTS.
        ``explain=True`` returns ``(item_idx, score, explanations)`` (see :meth:`explain_topk`).
        """
        if explain:
            return self.topk_explained(histories, k, exclude=exclude)
        feed, idx, score, rows = self._start(histories, k, exclude, events)
        for sl in self._chunks(len(rows)):
            i, s = self._infer(feed, rows[sl])
            self._check_rows(i, int(rows[sl][0]) if len(rows[sl]) else 0)
            idx[rows[sl]], score[rows[sl]] = i[:, :k], s[:, :k]
        return idx, score

    def recommend_many(self, histories: Sequence[Sequence[str]], k: int = 10, consumed: Sequence[Sequence[str]] | None = None,
                       events: Sequence[Sequence[str | None]] | None = None) -> list[Recommendation]:
        """External-id histories (most recent last) -> per user [(item_id, score), ...] best first.

        The model reads the last ``max_len`` ids; EVERY id of the history (and of ``consumed``, items the
        user consumed that are not in the history) is excluded from the answer. ``events``: the behaviour
        kind of each history item (e.g. ``["view", "purchase"]``), for a model that reads kinds.
        """
        length = self.max_len or max(1, max(map(len, histories), default=1))
        h = left_pad([self.to_idx(x) for x in histories], length)
        kinds = self.to_kinds(histories, events)
        idx, score = self.topk(h, k, self._consumed(histories, consumed), events=None if kinds is None else left_pad(kinds, length))
        return [self.to_ids(i, s) for i, s in zip(idx, score)]

    def recommend(self, history: Sequence[str], k: int = 10, consumed: Sequence[str] | None = None,
                  events: Sequence[str | None] | None = None) -> Recommendation:
        return self.recommend_many([history], k, None if consumed is None else [consumed], None if events is None else [events])[0]

    # -- companions: text queries and explanations (``<model>_query``, ``<model>_explain``) --------
    def _infer_named(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        inputs, req = self._named_request(arrays, outputs)
        res = self._call(lambda: self._client.infer(model, inputs, outputs=req, client_timeout=self.timeout_s))
        return {n: res.as_numpy(n) for n in outputs}

    def query_topk(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Text queries -> (item_idx [B, k], score [B, k]) from the served ``<model>_query``.

        Each query is checked and tokenized here (``fusionrec.query.QueryTokenizer`` with the
        tokenizer shipped in the repository); a bad one raises ``QueryError`` before anything is sent.
        """
        name, requests, idx, score = self._query_request(queries, k)
        for sl, arrays in requests:
            self._query_fill(idx, score, sl, self._infer_named(name, arrays, [ITEM_IDX, SCORE]))
        return idx, score

    def query(self, text: str, k: int = 10, history: Sequence[str] | None = None, mix: bool = False,
              mix_until: int = MIX_UNTIL, rrf_c: float = RRF_C) -> Recommendation:
        """A new user's words -> [(item_id, score), ...] best first; with a history, the sequential model answers.

        ``mix=True``: a history shorter than ``mix_until`` events gets the query's list and the sequential
        model's merged by weighted reciprocal-rank fusion (``fusionrec.query.mix_rankings`` with constant
        ``rrf_c``; the scores are then fusion scores), the query's weight falling linearly from 1 (no history)
        to 0 (``mix_until`` events); history items are never returned.
        """
        how, q_depth, s_depth = self._query_plan(text, k, history, mix, mix_until, rrf_c)
        history = list(history or [])
        if how == "sequence":
            return self.recommend(history, k)
        idx, score = self.query_topk([text], q_depth)
        if how == "query":
            return self.to_ids(idx[0], score[0])
        return self._mixed(self.to_ids(idx[0], score[0]), self.recommend(history, s_depth), history, k, mix_until, rrf_c)

    def explain_topk(self, histories: np.ndarray, items: np.ndarray, top_history: int | None = None) -> list[list]:
        """Explanations (``fusionrec.explain.Explanation``) of ``items`` [B, k] for item_idx ``histories`` [B, L],
        from the served ``<model>_explain``; rows with an empty history get ``None`` (popularity fallback)."""
        from fusionrec.artifacts import read_json
        from fusionrec.explain import explanations_from_arrays
        from fusionrec.model_repository import CONTRIB, DROP, EXPLAIN_SUFFIX, HISTORY, ITEMS, WEIGHT, feeds

        mdir = self._companion_dir(EXPLAIN_SUFFIX, "explanations")
        report = read_json(mdir / "export_report.json")
        E, L = int(report["explain_k"]), int(report["max_len"])
        items = np.asarray(items, dtype=np.int64)
        if items.ndim != 2 or items.shape[1] > E:
            raise ValueError(f"explanations cover at most {E} items per history ('{mdir.name}' was exported with explain_k={E})")
        h = feeds(np.asarray(histories, dtype=np.int64), L)[HISTORY]
        padded = np.concatenate([items, np.repeat(items[:, -1:], E - items.shape[1], axis=1)], axis=1)
        out: list[list | None] = [None] * len(h)
        rows = np.where((h > 0).any(axis=1))[0]
        for sl in self._chunks(len(rows)):
            r = rows[sl]
            res = self._infer_named(mdir.name, {HISTORY: h[r], ITEMS: padded[r]}, [SCORE, DROP, WEIGHT, CONTRIB])
            if np.isnan(res[SCORE]).all(axis=1).any():
                raise ValueError("the server rejected an explain row: an item_idx is outside the catalog of this model")
            ex = explanations_from_arrays(h[r], padded[r], res[SCORE], res[DROP], res[WEIGHT], res[CONTRIB],
                                          report["channels"], bool(report["split_exact"]), top_history)
            for j, b in enumerate(r):
                out[b] = ex[j][: items.shape[1]]
        return out

    def topk_explained(self, histories: np.ndarray, k: int, top_history: int | None = None, exclude: np.ndarray | None = None):
        """``topk`` plus the explanation of every recommended item: ``(item_idx, score, explanations)``."""
        idx, score = self.topk(histories, k, exclude)
        return idx, score, self.explain_topk(histories, idx, top_history)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RecommendClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncRecommendClient(_Base):
    """asyncio client (``tritonclient.grpc.aio``); same API as ``RecommendClient`` with ``await``.

    Example:
        >>> async with AsyncRecommendClient(model="fusionrec", repo="artifacts/repo") as c:   # doctest: +SKIP
        ...     recs = await c.recommend(["m12"], k=5)
    """

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "fusionrec", repo: str | os.PathLike | None = None, **kw):
        super().__init__(url, model, repo, **kw)
        import tritonclient.grpc as grpc
        import tritonclient.grpc.aio as aio

        self._grpc = grpc
        self._client = aio.InferenceServerClient(url)

    async def _call(self, fn):
        from tritonclient.utils import InferenceServerException

        for attempt in range(self.retries + 1):
            try:
                return await fn()
            except InferenceServerException as exc:
                if self._timeout(exc):
                    raise TimeoutError(f"model '{self.model}' at {self.url} did not answer within {self.timeout_s}s") from exc
                if not self._retryable(exc) or attempt == self.retries:
                    raise
                await asyncio.sleep(self.backoff_s * 2 ** attempt)

    async def _ensure_meta(self) -> None:
        if self.max_len is None or self.max_batch_size is None:
            self._set_meta((await self._call(lambda: self._client.get_model_config(self.model, client_timeout=self.timeout_s))).config)

    async def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None,
                   events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        await self._ensure_meta()
        feed, idx, score, rows = self._start(histories, k, exclude, events)

        async def one(sl: slice):
            inputs, outputs = self._inputs(feed, rows[sl], self._grpc)
            res = await self._call(lambda: self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s))
            return sl, res.as_numpy(ITEM_IDX), res.as_numpy(SCORE)

        for sl, i, s in await asyncio.gather(*(one(sl) for sl in self._chunks(len(rows)))):
            self._check_rows(i, int(rows[sl][0]) if len(rows[sl]) else 0)
            idx[rows[sl]], score[rows[sl]] = i[:, :k], s[:, :k]
        return idx, score

    async def recommend_many(self, histories: Sequence[Sequence[str]], k: int = 10, consumed: Sequence[Sequence[str]] | None = None,
                             events: Sequence[Sequence[str | None]] | None = None) -> list[Recommendation]:
        await self._ensure_meta()
        h = left_pad([self.to_idx(x) for x in histories], int(self.max_len))
        kinds = self.to_kinds(histories, events)
        idx, score = await self.topk(h, k, self._consumed(histories, consumed),
                                     events=None if kinds is None else left_pad(kinds, int(self.max_len)))
        return [self.to_ids(i, s) for i, s in zip(idx, score)]

    async def recommend(self, history: Sequence[str], k: int = 10, consumed: Sequence[str] | None = None,
                        events: Sequence[str | None] | None = None) -> Recommendation:
        return (await self.recommend_many([history], k, None if consumed is None else [consumed],
                                          None if events is None else [events]))[0]

    # -- companion: text queries (``<model>_query``) -------------------------------------------
    async def _infer_named(self, model: str, arrays: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        inputs, req = self._named_request(arrays, outputs)
        res = await self._call(lambda: self._client.infer(model, inputs, outputs=req, client_timeout=self.timeout_s))
        return {n: res.as_numpy(n) for n in outputs}

    async def query_topk(self, queries: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Text queries -> (item_idx [B, k], score [B, k]); as ``RecommendClient.query_topk``, requests sent concurrently."""
        name, requests, idx, score = self._query_request(queries, k)
        outs = await asyncio.gather(*(self._infer_named(name, arrays, [ITEM_IDX, SCORE]) for _, arrays in requests))
        for (sl, _), out in zip(requests, outs):
            self._query_fill(idx, score, sl, out)
        return idx, score

    async def query(self, text: str, k: int = 10, history: Sequence[str] | None = None, mix: bool = False,
                    mix_until: int = MIX_UNTIL, rrf_c: float = RRF_C) -> Recommendation:
        """As ``RecommendClient.query``; when mixing, the two lists are asked for concurrently."""
        how, q_depth, s_depth = self._query_plan(text, k, history, mix, mix_until, rrf_c)
        history = list(history or [])
        if how == "sequence":
            return await self.recommend(history, k)
        if how == "query":
            idx, score = await self.query_topk([text], q_depth)
            return self.to_ids(idx[0], score[0])
        (idx, score), seq = await asyncio.gather(self.query_topk([text], q_depth), self.recommend(history, s_depth))
        return self._mixed(self.to_ids(idx[0], score[0]), seq, history, k, mix_until, rrf_c)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncRecommendClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
