"""Read a dataset artifact (written by the ingest step); see docs/ARCHITECTURE.md.

Example:
    >>> ds = DatasetArtifact("artifacts/dataset")                     # doctest: +SKIP
    >>> cases, histories = ds.eval_cases("test", max_len=50)          # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fusionrec.artifacts import read_json, read_manifest
from fusionrec.ranking import exclusion_lists, left_pad

SPLITS = ("train", "valid", "test")


def is_missing(v: Any) -> bool:
    """A missing cell of an items/interactions table: None, NaN, ``pd.NA``/``NaT`` (not an empty string)."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        return bool(pd.isna(v)) if np.ndim(v) == 0 else False
    except (TypeError, ValueError):
        return False


class DatasetArtifact:
    """A read-only view of a dataset artifact folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, kind="dataset")

    # -- tables ---------------------------------------------------------------------------
    @cached_property
    def items(self) -> pd.DataFrame:
        """One row per item, sorted by ``item_idx`` (1..n_items)."""
        return pd.read_parquet(self.path / "items.parquet").sort_values("item_idx").reset_index(drop=True)

    def with_items(self, items: pd.DataFrame) -> "DatasetArtifact":
        """This dataset seen with another item table, in memory (nothing is written).

        Used to encode items appended to the catalog (``fusionrec.export.new_items``): media paths
        in ``items`` are relative to this artifact, or absolute.
        """
        view = copy.copy(self)
        view.__dict__["items"] = items.sort_values("item_idx").reset_index(drop=True)  # the cached_property's slot
        return view

    @cached_property
    def users(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "users.parquet").sort_values("user_idx").reset_index(drop=True)

    @cached_property
    def events(self) -> pd.DataFrame:
        """Every kept event, sorted by (user_idx, seq_pos)."""
        df = pd.read_parquet(self.path / "interactions" / "events.parquet")
        return df.sort_values(["user_idx", "seq_pos"], kind="stable").reset_index(drop=True)

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}', expected one of {SPLITS}")
        return pd.read_parquet(self.path / "interactions" / f"{name}.parquet")

    @cached_property
    def stats(self) -> dict:
        return read_json(self.path / "stats.json")

    @cached_property
    def meta(self) -> dict:
        p = self.path / "meta.json"
        return read_json(p) if p.exists() else {}

    @property
    def n_items(self) -> int:
        return int(len(self.items))

    @property
    def n_users(self) -> int:
        return int(len(self.users))

    @cached_property
    def cold_items(self) -> np.ndarray:
        """item_idx of the held-out cold-start items."""
        return self.items.loc[self.items["cold"].astype(bool), "item_idx"].to_numpy(np.int64)

    @cached_property
    def train_counts(self) -> np.ndarray:
        """Train events per item_idx, int64 [n_items + 1] (row 0, padding, is 0): what training saw of each item."""
        idx = self.events.loc[self.events["split"] == "train", "item_idx"].to_numpy(np.int64)
        return np.bincount(idx, minlength=self.n_items + 1)[: self.n_items + 1]

    @cached_property
    def item_ids(self) -> np.ndarray:
        """External item id per item_idx; index 0 is the padding entry ''."""
        ids = np.empty(self.n_items + 1, dtype=object)
        ids[0] = ""
        ids[self.items["item_idx"].to_numpy()] = self.items["item_id"].astype(str).to_numpy()
        return ids

    def media_path(self, relative: str | None) -> Path | None:
        """Absolute path of a media file stored in the artifact (``None`` stays ``None``)."""
        if relative is None or (isinstance(relative, float) and np.isnan(relative)):
            return None
        return self.path / str(relative)

    # -- behaviour kinds --------------------------------------------------------------------
    @cached_property
    def event_kinds(self) -> list[str]:
        """The distinct ``event`` values of the train events, most frequent first (ties by name): a model's kind vocabulary."""
        tr = self.events.loc[self.events["split"] == "train", "event"]
        counts = tr[tr.notna()].astype(str).value_counts()
        return sorted(counts.index.tolist(), key=lambda k: (-int(counts[k]), k))

    def kind_codes(self, kinds: Sequence[str]) -> np.ndarray:
        """Every event's kind id in the vocabulary ``kinds`` (1..len(kinds); 0 = none or not in it), in ``events`` order.

        Kept per vocabulary: training asks for the validation cases' kinds at every epoch.
        """
        cache = self.__dict__.setdefault("_kind_codes", {})
        key = tuple(kinds)
        if key not in cache:
            code = {k: i + 1 for i, k in enumerate(key)}
            cache[key] = self.events["event"].map(code).fillna(0).to_numpy(np.int64)
            cache[key].setflags(write=False)  # shared by every caller
        return cache[key]

    # -- sequences ------------------------------------------------------------------------
    def train_sequences(self) -> list[np.ndarray]:
        """Per user (in user_idx order, users without train events skipped) the train item_idx sequence."""
        tr = self.events[self.events["split"] == "train"]
        return [g["item_idx"].to_numpy(np.int64) for _, g in tr.groupby("user_idx", sort=True)]

    def train_kind_sequences(self, kinds: Sequence[str]) -> list[np.ndarray]:
        """Kind ids (see :meth:`kind_codes`) parallel to :meth:`train_sequences`."""
        codes = self.kind_codes(kinds)
        train = (self.events["split"] == "train").to_numpy()
        users = self.events["user_idx"].to_numpy()[train]
        codes = codes[train]
        cuts = np.flatnonzero(np.diff(users)) + 1  # events are sorted by (user_idx, seq_pos)
        return list(np.split(codes, cuts)) if len(codes) else []

    def history_kinds(self, cases: pd.DataFrame, max_len: int, kinds: Sequence[str]) -> np.ndarray:
        """Kind ids int64 [n_cases, max_len] parallel to the histories of :meth:`eval_cases` (0 = padding / unknown kind)."""
        codes = self.kind_codes(kinds)
        users = self.events["user_idx"].to_numpy()
        starts = {int(u): int(i) for u, i in zip(*np.unique(users, return_index=True))}
        return left_pad([codes[starts[int(u)]: starts[int(u)] + int(p)] for u, p in zip(cases["user_idx"], cases["seq_pos"])], max_len)

    def eval_cases(self, split: str = "test", max_len: int = 50) -> tuple[pd.DataFrame, np.ndarray]:
        """The evaluation cases of ``split`` and their histories.

        Returns ``(cases, histories)``: ``cases`` has ``case_id, user_idx, item_idx, timestamp,
        seq_pos, segment``; ``histories`` is int64 [n_cases, max_len], left-padded, holding that
        user's events with a smaller ``seq_pos`` (most recent last).
        """
        if split not in ("valid", "test"):
            raise ValueError("eval cases exist for 'valid' and 'test'")
        cases = self.split(split).sort_values("case_id").reset_index(drop=True)
        if "segment" not in cases:
            cases["segment"] = "warm"
        by_user = {int(u): g["item_idx"].to_numpy(np.int64) for u, g in self.events.groupby("user_idx", sort=False)}
        seqs = [by_user[int(u)][: int(p)] for u, p in zip(cases["user_idx"], cases["seq_pos"])]
        return cases, left_pad(seqs, max_len)

    def consumed_before(self, cases: pd.DataFrame) -> np.ndarray:
        """Every distinct item each case's user consumed before it (all earlier events, any split), -1 padded.

        int64 [n_cases, E]: the exclusion lists of full-ranking evaluation. The sequence model reads only
        the last L items; a user's whole consumed set is excluded from the ranking, not just those L.
        """
        by_user = {int(u): g["item_idx"].to_numpy(np.int64) for u, g in self.events.groupby("user_idx", sort=False)}
        return exclusion_lists([by_user[int(u)][: int(p)] for u, p in zip(cases["user_idx"], cases["seq_pos"])])

    def __repr__(self) -> str:
        return f"DatasetArtifact({str(self.path)!r}, items={self.n_items}, users={self.n_users})"
