"""Ingest step: a raw dataset folder in the data contract -> a dataset artifact.

The raw folder holds ``items.{csv,parquet}``, ``interactions.{csv,parquet}`` and media files
(see ``docs/ARCHITECTURE.md``, "dataset (ingest)", for the artifact this writes). Ingest

* validates the schema: a missing required column, an empty file or an unreadable table is a
  :class:`DataContractError` naming the file and column; a bad *row* becomes a row of
  ``rejects.parquet`` with its reason, so ``kept + rejected == input rows`` for each file;
* normalises timestamps (epoch seconds, numeric strings, ISO 8601 with or without zone; naive
  means UTC) to int64 epoch seconds;
* drops exact duplicate interaction rows, optionally applies an iterated k-core filter;
* maps ids to contiguous indices from 1 (0 is padding): items in input row order, users in
  order of first appearance in the interactions file;
* orders each user's events by time, ties broken by a seeded random permutation (``seq_pos``;
  ``tie_break="row"`` keeps input row order): real logs are often sorted by item id within a
  second, and passing that order on would hand a sequential model an artificial signal;
* holds out a seeded share of items (among those with events) as cold-start items and splits
  the rest per user, temporal leave-one-out; a valid/test case is ``warm`` when its target has
  training events and ``cold`` when it has none (held out, or simply new), ``cold_reason`` says which;
* resolves media paths inside the dataset folder (``escape`` when a path leaves it,
  ``missing`` when the file is absent: the modality is masked, the item is kept) and copies
  the present files into the artifact so it is self-contained.

Row-level decisions (documented in ``docs/ingest.md``): a duplicate ``item_id`` keeps its first
row and rejects the others; a null/blank id rejects the row; a null ``weight`` means 1.0 but a
non-numeric one rejects the row; a null or unparseable ``timestamp`` rejects the row; an exact
duplicate interaction row (same values in every column as an earlier row) is rejected; the
k-core filter drops interactions, never catalog items. Extra interaction columns are ignored.

Example:
    >>> import tempfile
    >>> from fusionrec.data.ingest import IngestConfig, run, summary
    >>> raw = Path(tempfile.mkdtemp()) / "raw"
    >>> raw.mkdir()
    >>> _ = (raw / "items.csv").write_text("item_id,title\\nA,Red shoes\\nB,Blue hat\\nC,Green scarf\\n")
    >>> _ = (raw / "interactions.csv").write_text("user_id,item_id,timestamp\\n"
    ...     "u1,A,1577836800\\nu1,B,1577836900\\nu1,C,2020-01-01T00:05:00Z\\nu2,B,1577836800\\nu2,C,1577837000\\nu2,C,nope\\n")
    >>> path = run(raw, raw.parent / "dataset", IngestConfig(cold_item_share=0.0))
    >>> print(summary(path))                                 # doctest: +ELLIPSIS
    dataset: .../dataset
      items 3 (0 cold-start), users 2
      interactions 5: train 3, valid 1, test 1
      test cases: warm 1, cold 0 (held out 0, unseen in training 0); valid cases 1
      interactions.csv: 6 rows, kept 5, rejected 1 (unparseable timestamp 1)
      items.csv: 3 rows, kept 3, rejected 0 (none)
      media: audio ok 0; image ok 0
      time span: 2020-01-01T00:00:00+00:00 .. 2020-01-01T00:05:00+00:00
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from fusionrec.artifacts import (
    artifact_dir,
    check_output,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    write_manifest,
)
from fusionrec.config import StepConfig
from fusionrec.data.dataset import is_missing
from fusionrec.progress import get_logger, progress

log = get_logger(__name__)

ITEM_REQUIRED = ("item_id",)
INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
TEXT_COLUMNS = ("title", "description")
MEDIA_COLUMNS = ("image", "audio")
# Columns ingest adds to items.parquet; a source column of that name would be ambiguous.
RESERVED_ITEM_COLUMNS = ("item_idx", "cold", "image_status", "audio_status")
MEDIA_STATUSES = ("ok", "absent", "missing", "escape")
SPLIT_NAMES = ("train", "valid", "test", "none")

# Reasons recorded in rejects.parquet (the `reason` column is one of these; `detail` says more).
R_MISSING_ID = "missing {col}"
R_DUP_ITEM = "duplicate item_id"
R_MISSING_TS = "missing timestamp"
R_BAD_TS = "unparseable timestamp"
R_BAD_WEIGHT = "weight is not numeric"
R_UNKNOWN_ITEM = "unknown item_id"
R_DUP_ROW = "exact duplicate"
R_KCORE_USER = "k-core: user has fewer than {n} events"
R_KCORE_ITEM = "k-core: item has fewer than {n} events"


class DataContractError(ValueError):
    """The raw dataset folder breaks the data contract (message names file, column and row)."""


class IngestConfig(StepConfig):
    """Settings of the ingest step (config file section ``ingest``)."""

    cold_item_share: float = Field(0.1, ge=0.0, lt=1.0, description="Share of items (among those with events) held out as cold-start items.")
    min_user_events: int = Field(0, ge=0, description="k-core: drop users with fewer events (0 = off); iterated with min_item_events.")
    min_item_events: int = Field(0, ge=0, description="k-core: drop events of items with fewer events (0 = off); items stay in the catalog.")
    seed: int = Field(0, description="Seed of the cold-start item draw and of the tie-break permutation.")
    tie_break: Literal["random", "row"] = Field(
        "random", description="Order of a user's events with equal timestamps: 'random' = a permutation seeded by `seed` "
                              "(default), 'row' = input row order (leaks any sort order of the source file).")
    link_media: bool = Field(True, description="Hard-link media into the artifact when possible (else copy).")
    extra_test_events: int = Field(
        0, ge=0, description="Secondary test: hold out this many more warm events per user, the ones just before the "
                             "validation event, as extra test cases (each user keeps at least one warm train event). "
                             "Tighter intervals on the same users; training loses those events. 0 = leave-one-out.")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _find_table(source: Path, stem: str) -> Path:
    found = [source / f"{stem}.{ext}" for ext in ("csv", "parquet") if (source / f"{stem}.{ext}").is_file()]
    if not found:
        raise DataContractError(f"{source}: no {stem}.csv or {stem}.parquet (the data contract needs one of them)")
    if len(found) > 1:
        raise DataContractError(f"{source}: both {stem}.csv and {stem}.parquet exist; keep exactly one")
    return found[0]


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (every cell as a string, only empty cells are null) or Parquet table.

    Raises :class:`DataContractError` for an empty or unreadable file.
    """
    name = path.name
    if path.stat().st_size == 0:
        raise DataContractError(f"{name} is empty (0 bytes): expected a header and at least one data row")
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataContractError(f"{name} is empty: expected a header and at least one data row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataContractError(f"{name}: cannot parse as CSV: {exc}") from None
    except Exception as exc:  # pyarrow raises several types for a broken parquet file
        if path.suffix == ".csv":
            raise
        raise DataContractError(f"{name}: cannot read as Parquet: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DataContractError(f"{name} has no data rows (columns: {', '.join(df.columns) or 'none'})")
    return df.reset_index(drop=True)


def _require(df: pd.DataFrame, name: str, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataContractError(
            f"{name}: missing required column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} (found: {', '.join(repr(c) for c in df.columns)})"
        )


# ---------------------------------------------------------------------------------------------
# value normalisation
# ---------------------------------------------------------------------------------------------
def _as_ids(s: pd.Series) -> pd.Series:
    """Ids as ``str`` (object dtype), ``None`` where null or blank. Integral floats lose the ``.0``."""
    if pd.api.types.is_float_dtype(s):
        nn = s.dropna()
        if len(nn) and np.isfinite(nn).all() and (nn == np.round(nn)).all():
            s = s.astype("Int64")
    obj = s.astype(object)
    out = [None if is_missing(v) else str(v) for v in obj]
    out = [None if (v is None or v.strip() == "") else v for v in out]
    return pd.Series(out, index=s.index, dtype=object)


def _as_text(s: pd.Series) -> pd.Series:
    """Text/path values as ``str`` or ``None`` (blank strings are ``None``)."""
    out = []
    for v in s.astype(object):
        if is_missing(v):
            out.append(None)
        else:
            v = str(v)
            out.append(v if v.strip() else None)
    return pd.Series(out, index=s.index, dtype=object)


_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
# An ISO 8601 string with a time part that ends in a zone designator (Z, +hh, +hh:mm, +hhmm).
_AWARE = re.compile(r"^.*[T ]\d{2}.*?(Z|z|[+-]\d{2}(:?\d{2})?)\s*$")
_EPOCH = pd.Timestamp(0, tz="UTC")


def _datetimes_to_epoch(d: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    ok = d.notna().to_numpy()
    secs = np.zeros(len(d), np.int64)
    if ok.any():
        secs[ok] = ((d[ok] - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    return secs, ok


def parse_timestamps(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps -> (int64 epoch seconds, ok mask).

    Accepts epoch seconds (ints, floats, numeric strings; fractions floored), ISO 8601 strings
    with or without a zone (naive = UTC), and datetime values. Each value class is parsed on its
    own: pandas' ISO parser carries one string's UTC offset over to the next naive string.

    Example:
        >>> secs, ok = parse_timestamps(pd.Series(["1577836800", "2020-01-01T01:00:00+01:00", "bad"]))
        >>> secs[:2].tolist(), ok.tolist()
        ([1577836800, 1577836800], [True, True, False])
    """
    n = len(s)
    if pd.api.types.is_datetime64_any_dtype(s):
        return _datetimes_to_epoch(pd.to_datetime(s, utc=True))
    if pd.api.types.is_bool_dtype(s):
        return np.zeros(n, np.int64), np.zeros(n, bool)
    if pd.api.types.is_integer_dtype(s):
        ok = s.notna().to_numpy()
        return np.where(ok, s.fillna(0).to_numpy(np.int64), 0), ok
    if pd.api.types.is_float_dtype(s):
        v = s.to_numpy(np.float64)
        ok = np.isfinite(v)
        return np.where(ok, np.floor(np.where(ok, v, 0.0)), 0).astype(np.int64), ok

    secs = np.zeros(n, np.int64)
    ok = np.zeros(n, bool)
    numeric_i, naive_i, aware_i, naive_s, aware_s, dt_i, dt_v = [], [], [], [], [], [], []
    for i, v in enumerate(s.astype(object)):
        if v is None or v is pd.NA or isinstance(v, bool):
            continue
        if isinstance(v, (int, np.integer)):
            secs[i], ok[i] = int(v), True
        elif isinstance(v, (float, np.floating)):
            if math.isfinite(v):
                secs[i], ok[i] = math.floor(v), True
        elif isinstance(v, str):
            if _NUMERIC.match(v):
                numeric_i.append(i)
            elif _AWARE.match(v):
                aware_i.append(i)
                aware_s.append(v.strip())
            else:
                naive_i.append(i)
                naive_s.append(v.strip())
        elif isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "isoformat"):
            dt_i.append(i)
            dt_v.append(v)
    if numeric_i:
        num = s.iloc[numeric_i].astype(str).str.strip()
        as_int = pd.to_numeric(num.where(num.str.fullmatch(r"[+-]?\d{1,18}"), None), errors="coerce")
        as_float = np.floor(pd.to_numeric(num, errors="coerce").to_numpy(np.float64))
        good = np.isfinite(as_float) & (np.abs(as_float) < 2**62)
        exact = as_int.notna().to_numpy()
        vals = np.where(exact, as_int.fillna(0).to_numpy(np.int64), np.where(good, as_float, 0).astype(np.int64))
        secs[numeric_i], ok[numeric_i] = vals, good | exact
    for idx, vals in ((naive_i, naive_s), (aware_i, aware_s)):
        if idx:
            d = pd.to_datetime(pd.Series(vals, dtype=object), format="ISO8601", utc=True, errors="coerce")
            sec, good = _datetimes_to_epoch(d)
            secs[idx], ok[idx] = sec, good
    for i, v in zip(dt_i, dt_v):
        d = pd.to_datetime(pd.Series([v]), utc=True, errors="coerce")
        sec, good = _datetimes_to_epoch(d)
        secs[i], ok[i] = sec[0], good[0]
    return secs, ok


#: Epoch units by magnitude: "now" is ~1.7e9 s, ~1.7e12 ms, ~1.7e15 us, ~1.7e18 ns. A value in
#: seconds above 1e11 would be past the year 5000, so the ranges cannot be confused for real data.
_EPOCH_UNITS = ((1e11, 1, "seconds"), (1e14, 10**3, "milliseconds"), (1e17, 10**6, "microseconds"), (math.inf, 10**9, "nanoseconds"))


def epoch_unit(values: np.ndarray, where: str = "timestamp") -> tuple[int, str]:
    """The unit of numeric epoch timestamps, from their magnitude: ``(divisor to seconds, name)``.

    One unit per column: values spanning two units are refused (DataContractError), since no
    rule could tell which rows meant what.

    Example:
        >>> epoch_unit(np.array([1577836800, 1577836900]))
        (1, 'seconds')
        >>> epoch_unit(np.array([1577836800123, 1577836900000]))
        (1000, 'milliseconds')
    """
    a = np.abs(np.asarray(values, dtype=np.float64))
    if len(a) == 0:
        return 1, "seconds"

    def unit(x: float) -> int:
        return next(i for i, (limit, _, _) in enumerate(_EPOCH_UNITS) if x < limit)

    lo, hi = unit(float(a.min())), unit(float(a.max()))
    if lo != hi:
        raise DataContractError(
            f"{where}: numeric timestamps mix {_EPOCH_UNITS[lo][2]} ({a.min():.0f}) and {_EPOCH_UNITS[hi][2]} ({a.max():.0f}); "
            "write one unit (epoch seconds) or ISO 8601")
    _, div, name = _EPOCH_UNITS[hi]
    return div, name


def _numeric_timestamps(s: pd.Series) -> np.ndarray:
    """Rows whose timestamp is a number (or a numeric string), not a date."""
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        return np.zeros(len(s), bool)
    if pd.api.types.is_numeric_dtype(s):
        return s.notna().to_numpy()
    return np.array([(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))
                     or (isinstance(v, str) and bool(_NUMERIC.match(v))) for v in s.astype(object)], bool)


def _infer_tabular(s: pd.Series) -> pd.Series:
    """A CSV column (strings) becomes numeric when every non-null value parses as a number."""
    if s.dtype != object:
        return s
    nn = s.dropna()
    if len(nn) == 0 or not all(isinstance(v, str) for v in nn):
        return s
    num = pd.to_numeric(nn, errors="coerce")
    if num.notna().all():
        return pd.to_numeric(s, errors="coerce")
    return s


def _is_scalar_column(s: pd.Series) -> bool:
    nn = s.dropna()
    if len(nn) == 0:
        return True
    v = nn.iloc[0]
    return not isinstance(v, (list, tuple, dict, set, np.ndarray, bytes))


# ---------------------------------------------------------------------------------------------
# rejects
# ---------------------------------------------------------------------------------------------
class _Rejects:
    """Collects rejected rows of one source file: keeps exactly one reason per row."""

    def __init__(self, name: str, raw: pd.DataFrame):
        self.name = name
        self.raw = raw
        self.alive = np.ones(len(raw), bool)
        self.rows: list[tuple[int, str | None, str, str]] = []

    def reject(self, mask: np.ndarray, column: str | None, reason: str, detail: list[str] | str) -> None:
        """Reject the rows in ``mask`` still alive; ``detail`` is one string or one per row of ``mask``."""
        mask = np.asarray(mask, bool)
        rows = np.flatnonzero(mask)
        details = [detail] * len(rows) if isinstance(detail, str) else list(detail)
        if len(details) != len(rows):
            raise AssertionError("one detail per rejected row")
        for r, d in zip(rows, details):
            if self.alive[r]:
                self.alive[r] = False
                self.rows.append((int(r), column, reason, d))

    def frame(self) -> pd.DataFrame:
        if not self.rows:
            return _empty_rejects()
        rows = sorted(self.rows)
        idx = [r for r, *_ in rows]
        raw_json = json.loads(self.raw.iloc[idx].to_json(orient="records", date_format="iso", double_precision=15, default_handler=str))
        return pd.DataFrame(
            {
                "source": self.name,
                "row": np.asarray(idx, np.int64),
                "column": [c for _, c, _, _ in rows],
                "reason": [r for _, _, r, _ in rows],
                "detail": [d for *_, d in rows],
                "raw": [json.dumps(rec, ensure_ascii=False, sort_keys=False) for rec in raw_json],
            }
        )


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({"source": pd.Series([], dtype=object), "row": pd.Series([], dtype=np.int64),
                         "column": pd.Series([], dtype=object), "reason": pd.Series([], dtype=object),
                         "detail": pd.Series([], dtype=object), "raw": pd.Series([], dtype=object)})


def _line(name: str, row: int) -> str:
    return f"row {row}" + (f" (line {row + 2})" if name.endswith(".csv") else "")


# ---------------------------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------------------------
def _clean_items(raw: pd.DataFrame, name: str) -> tuple[pd.DataFrame, _Rejects]:
    _require(raw, name, ITEM_REQUIRED)
    clash = [c for c in RESERVED_ITEM_COLUMNS if c in raw.columns]
    if clash:
        raise DataContractError(f"{name}: column name{'s' if len(clash) > 1 else ''} {', '.join(map(repr, clash))} "
                                f"reserved (ingest writes it); rename the column")
    rej = _Rejects(name, raw)
    ids = _as_ids(raw["item_id"])
    null = ids.isna().to_numpy()
    rej.reject(null, "item_id", R_MISSING_ID.format(col="item_id"), [f"{_line(name, r)}: item_id is empty" for r in np.flatnonzero(null)])
    first: dict[str, int] = {}
    dup = np.zeros(len(raw), bool)
    dup_detail = []
    for r, v in enumerate(ids):
        if v is None:
            continue
        if v in first:
            dup[r] = True
            dup_detail.append(f"{_line(name, r)}: item_id {v!r} already at row {first[v]}; the first row is kept")
        else:
            first[v] = r
    rej.reject(dup, "item_id", R_DUP_ITEM, dup_detail)

    kept = raw.loc[rej.alive].copy()
    items = pd.DataFrame({"item_id": ids[rej.alive].to_numpy(dtype=object)})
    items.insert(0, "item_idx", np.arange(1, len(items) + 1, dtype=np.int64))
    for c in TEXT_COLUMNS + MEDIA_COLUMNS:
        items[c] = _as_text(kept[c]).to_numpy(dtype=object) if c in kept.columns else np.full(len(items), None, dtype=object)
    items["_row"] = np.flatnonzero(rej.alive)
    return items, rej


def read_items(path: Path) -> pd.DataFrame:
    """An items table (CSV or Parquet, or a folder holding one) cleaned by ingest's rules, for items added later.

    ``fusionrec export --add-items`` reads new items here: ids as strings, text and media paths as
    text or None, further scalar columns as tabular ones (numeric when every CSV value parses), as
    ingest would. The columns ingest computes (``item_idx``, ``cold``, ``*_status``) are dropped;
    a row ingest would reject (blank or repeated ``item_id``) is an error, since no new item may be lost.
    """
    path = Path(path)
    if path.is_dir():
        path = _find_table(path, "items")
    raw = read_table(path)
    raw = raw.drop(columns=[c for c in RESERVED_ITEM_COLUMNS if c in raw.columns])
    items, rej = _clean_items(raw, path.name)
    if rej.rows:
        details = [d for *_, d in sorted(rej.rows)]
        raise DataContractError(f"{path.name}: {len(details)} new item row(s) rejected: {'; '.join(details[:5])}")
    tab, _, _ = _tabular(raw, rej.alive, path.suffix == ".csv")
    items = items.drop(columns=["item_idx", "_row"]).reset_index(drop=True)
    return pd.concat([items, tab.reset_index(drop=True)], axis=1)


def _tabular(raw: pd.DataFrame, alive: np.ndarray, csv: bool) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The further scalar columns of the items file (tabular modality) for kept rows."""
    skip = set(ITEM_REQUIRED) | set(TEXT_COLUMNS) | set(MEDIA_COLUMNS)
    cols, ignored, out = [], [], {}
    for c in raw.columns:
        if c in skip:
            continue
        s = raw.loc[alive, c].reset_index(drop=True)
        if not _is_scalar_column(s):
            ignored.append(c)
            continue
        out[c] = _infer_tabular(s) if csv else s
        cols.append(c)
    return pd.DataFrame(out), cols, ignored


# ---------------------------------------------------------------------------------------------
# media
# ---------------------------------------------------------------------------------------------
def _resolve_media(source: Path, value: str) -> tuple[str, Path | None, str]:
    """(status, resolved file or None, detail) for one media path given in the items file."""
    root = source.resolve()
    p = Path(value)
    cand = p if p.is_absolute() else source / p
    try:
        resolved = cand.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # symlink loop
        return "missing", None, f"cannot resolve: {exc}"
    if not resolved.is_relative_to(root):
        return "escape", None, f"resolves to {resolved}, outside the dataset folder {root}"
    if not resolved.is_file():
        return "missing", None, "not a file" if resolved.exists() else "file not found"
    return "ok", resolved, ""


def _artifact_media_path(rel: Path, used: set[str]) -> str:
    """Where a source file (path relative to the dataset folder) goes in the artifact.

    Files under the source's ``media/`` keep their path; any other file goes under
    ``media/_root/``; a (contrived) clash gets a numbered folder.
    """
    rel_s = rel.as_posix()
    dest = rel_s if rel.parts[0] == "media" and len(rel.parts) > 1 else f"media/_root/{rel_s}"
    n = 1
    while dest in used:
        dest = f"media/_clash{n}/{rel_s}"
        n += 1
    return dest


def _place_media(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _media(items: pd.DataFrame, source: Path, tmp: Path, link: bool) -> pd.DataFrame:
    """Resolve media columns in place (paths -> artifact-relative, status columns), copy the files into ``tmp``; return the issues."""
    issues = []
    root = source.resolve()
    placed: dict[Path, str] = {}
    used: set[str] = set()
    todo = [(i, c) for c in MEDIA_COLUMNS for i in range(len(items))]
    statuses = {c: np.full(len(items), "absent", dtype=object) for c in MEDIA_COLUMNS}
    paths = {c: np.full(len(items), None, dtype=object) for c in MEDIA_COLUMNS}
    for i, c in progress(todo, desc="media", unit="file", leave=False):
        value = items[c].iat[i]
        if value is None:
            continue
        status, resolved, detail = _resolve_media(source, value)
        statuses[c][i] = status
        if status == "ok":
            rel = placed.get(resolved)
            if rel is None:
                rel = _artifact_media_path(resolved.relative_to(root), used)
                _place_media(resolved, tmp / rel, link)
                placed[resolved] = rel
                used.add(rel)
            paths[c][i] = rel
        else:
            issues.append({"item_idx": int(items["item_idx"].iat[i]), "item_id": items["item_id"].iat[i],
                           "column": c, "path": value, "status": status, "detail": detail})
    for c in MEDIA_COLUMNS:
        items[c] = paths[c]
        items[f"{c}_status"] = statuses[c]
    if issues:
        return pd.DataFrame(issues)
    return pd.DataFrame({"item_idx": pd.Series([], dtype=np.int64), "item_id": pd.Series([], dtype=object),
                         "column": pd.Series([], dtype=object), "path": pd.Series([], dtype=object),
                         "status": pd.Series([], dtype=object), "detail": pd.Series([], dtype=object)})


# ---------------------------------------------------------------------------------------------
# interactions
# ---------------------------------------------------------------------------------------------
def _clean_interactions(raw: pd.DataFrame, name: str, item_index: dict[str, int], cfg: IngestConfig) -> tuple[pd.DataFrame, _Rejects, list[str]]:
    _require(raw, name, INTERACTION_REQUIRED)
    rej = _Rejects(name, raw)
    n = len(raw)
    users = _as_ids(raw["user_id"])
    items = _as_ids(raw["item_id"])
    for col, ids in (("user_id", users), ("item_id", items)):
        m = ids.isna().to_numpy()
        rej.reject(m, col, R_MISSING_ID.format(col=col), [f"{_line(name, r)}: {col} is empty" for r in np.flatnonzero(m)])

    ts_raw = raw["timestamp"]
    secs, ts_ok = parse_timestamps(ts_raw)
    numeric = _numeric_timestamps(ts_raw) & ts_ok
    if numeric.any():
        div, unit = epoch_unit(secs[numeric], f"{name}: timestamp")
        if div > 1:  # kept as is they would land in the year 50000
            log.warning("%s: numeric timestamps are epoch %s (up to %d): converted to seconds", name, unit, int(secs[numeric].max()))
            secs[numeric] //= div
    ts_null = _as_text(ts_raw).isna().to_numpy() if ts_raw.dtype == object else ts_raw.isna().to_numpy()
    rej.reject(ts_null, "timestamp", R_MISSING_TS, [f"{_line(name, r)}: timestamp is empty" for r in np.flatnonzero(ts_null)])
    bad = ~ts_ok & ~ts_null
    rej.reject(bad, "timestamp", R_BAD_TS,
               [f"{_line(name, r)}: {ts_raw.iat[r]!r} is neither epoch seconds nor ISO 8601" for r in np.flatnonzero(bad)])

    weight = np.ones(n, np.float32)
    if "weight" in raw.columns:
        w = raw["weight"]
        w_null = _as_text(w).isna().to_numpy() if w.dtype == object else w.isna().to_numpy()
        if pd.api.types.is_bool_dtype(w):
            num = pd.Series(np.nan, index=w.index)
        else:
            num = pd.to_numeric(w.where(~w_null, None), errors="coerce")
        num_v = num.to_numpy(np.float64, na_value=np.nan)
        w_bad = ~w_null & ~np.isfinite(num_v)
        rej.reject(w_bad, "weight", R_BAD_WEIGHT, [f"{_line(name, r)}: weight {w.iat[r]!r} is not a finite number" for r in np.flatnonzero(w_bad)])
        weight = np.where(w_null | w_bad, 1.0, num_v).astype(np.float32)

    unknown = np.array([v is not None and v not in item_index for v in items], bool)
    rej.reject(unknown, "item_id", R_UNKNOWN_ITEM,
               [f"{_line(name, r)}: item_id {items.iat[r]!r} is not in the items file (or its row was rejected)" for r in np.flatnonzero(unknown)])

    # exact duplicates: same value in every column (compared as text, so NaN == NaN) as an earlier kept row
    alive_idx = np.flatnonzero(rej.alive)
    keys = list(raw.iloc[alive_idx].astype(str).itertuples(index=False, name=None))
    first_row: dict[tuple, int] = {}
    dup = np.zeros(n, bool)
    dup_detail = []
    for r, key in zip(alive_idx, keys):
        if key in first_row:
            dup[r] = True
            dup_detail.append(f"{_line(name, int(r))}: same values as row {first_row[key]}")
        else:
            first_row[key] = int(r)
    rej.reject(dup, None, R_DUP_ROW, dup_detail)

    # iterated k-core over the surviving interactions
    if cfg.min_user_events > 0 or cfg.min_item_events > 0:
        kcore = [(users, "user_id", "user", cfg.min_user_events, R_KCORE_USER),
                 (items, "item_id", "item", cfg.min_item_events, R_KCORE_ITEM)]
        while True:
            changed = False
            for ids, column, what, minimum, reason in kcore:
                if minimum <= 0:
                    continue
                alive = rej.alive
                cnt = ids[alive].value_counts()
                small = set(cnt[cnt < minimum].index)
                m = alive & ids.isin(small).to_numpy()
                if m.any():
                    changed = True
                    rej.reject(m, column, reason.format(n=minimum),
                               [f"{_line(name, r)}: {what} {ids.iat[r]!r} has {cnt[ids.iat[r]]} events" for r in np.flatnonzero(m)])
            if not changed:
                break

    a = rej.alive
    events = pd.DataFrame({
        "_row": np.flatnonzero(a).astype(np.int64),
        "user_id": users[a].to_numpy(dtype=object),
        "item_idx": np.array([item_index[v] for v in items[a]], dtype=np.int64),
        "timestamp": secs[a],
        "event": _as_text(raw["event"])[a].to_numpy(dtype=object) if "event" in raw.columns else np.full(int(a.sum()), None, dtype=object),
        "weight": weight[a],
    })
    ignored = [c for c in raw.columns if c not in INTERACTION_REQUIRED + ("event", "weight")]
    return events, rej, ignored


SEGMENT_REASONS = {"held_out": "target is a held-out cold-start item", "unseen": "target has no training events (new in time)"}


def tie_break_keys(n: int, how: str, seed: int) -> np.ndarray:
    """The secondary sort key of ``n`` events after (user, timestamp).

    ``random``: a permutation drawn from its own seeded stream (``[seed, 1]``, independent of the
    cold-item draw), so equal-timestamp events are in an order that carries no information.
    ``row``: 0..n-1, the input row order.
    """
    if how == "row":
        return np.arange(n, dtype=np.int64)
    if how == "random":
        return np.random.default_rng([int(seed), 1]).permutation(n).astype(np.int64)
    raise ValueError(f"tie_break must be 'random' or 'row', got {how!r}")


def _split(events: pd.DataFrame, cold: np.ndarray, tie_break: str = "random", seed: int = 0,
           extra_test_events: int = 0) -> pd.DataFrame:
    """Order events per user (time, then the tie-break key), assign seq_pos, split, segment and case_id.

    Per user, the last warm event is the test case and the one before it the validation case (when the
    user has >= 3 warm events); ``extra_test_events`` more warm events before the validation one become
    test cases too (the secondary test), each only while a warm train event is left before it.
    Segments by what a model trained on this split saw: a valid/test case is ``warm`` when its
    target item has at least one train event, else ``cold`` (``cold_reason`` ``held_out`` for
    the held-out cold-start items, ``unseen`` for an item whose only events fall after training).
    """
    rows = events["_row"].to_numpy()
    if np.any(np.diff(rows) < 0):
        raise AssertionError("events must be in input row order here")
    tie = tie_break_keys(len(events), tie_break, seed)
    order = np.lexsort((tie, events["timestamp"].to_numpy(), events["user_idx"].to_numpy()))
    ev = events.iloc[order].reset_index(drop=True)
    ev["seq_pos"] = ev.groupby("user_idx", sort=False).cumcount().astype(np.int32)
    is_cold = cold[ev["item_idx"].to_numpy()]
    split = np.full(len(ev), "train", dtype=object)
    segment = np.full(len(ev), None, dtype=object)
    has_history = ev["seq_pos"].to_numpy() > 0
    split[is_cold & has_history] = "test"
    segment[is_cold & has_history] = "cold"
    split[is_cold & ~has_history] = "none"
    warm = ev[~is_cold]
    from_end = warm.groupby("user_idx", sort=False).cumcount(ascending=False).to_numpy()
    n_warm = warm.groupby("user_idx", sort=False)["user_idx"].transform("size").to_numpy()
    warm_pos = np.flatnonzero(~is_cold)
    enough = n_warm >= 3
    split[warm_pos[enough & (from_end == 0)]] = "test"
    segment[warm_pos[enough & (from_end == 0)]] = "warm"
    split[warm_pos[enough & (from_end == 1)]] = "valid"
    segment[warm_pos[enough & (from_end == 1)]] = "warm"
    # from the end: test, valid, then the extras, each only with a warm train event left before it (their segment is set below)
    split[warm_pos[(from_end >= 2) & (from_end < 2 + int(extra_test_events)) & (n_warm >= from_end + 2)]] = "test"
    case = np.isin(split, ("valid", "test"))
    trained = np.zeros(len(cold), bool)
    trained[ev["item_idx"].to_numpy()[split == "train"]] = True
    target_trained = trained[ev["item_idx"].to_numpy()]
    segment[case] = np.where(target_trained[case], "warm", "cold")
    reason = np.full(len(ev), None, dtype=object)
    reason[case & ~target_trained] = np.where(is_cold[case & ~target_trained], "held_out", "unseen")
    ev["split"] = split
    ev["segment"] = segment
    ev["cold_reason"] = reason
    case_id = np.full(len(ev), -1, np.int64)
    case_id[case] = np.arange(int(case.sum()), dtype=np.int64)
    ev["case_id"] = case_id
    return ev


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with all-null object columns typed as string (not Arrow's null type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def _iso(t: int) -> str:
    return pd.Timestamp(int(t), unit="s", tz="UTC").isoformat()


def run(source: Path, out: Path, cfg: IngestConfig | None = None, force: bool = False) -> Path:
    """Ingest the raw dataset folder ``source`` into the dataset artifact ``out``; returns ``out``.

    ``out`` must be new, empty or a dataset artifact (``force`` replaces anything else), and never
    the source folder or a folder inside it (see ``fusionrec.artifacts.check_output``).

    Example:
        >>> run(Path("raw/demo"), Path("artifacts/dataset"), IngestConfig(cold_item_share=0.1, seed=0))  # doctest: +SKIP
    """
    cfg = cfg or IngestConfig()
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataContractError(f"{source}: not a dataset folder (expected items.csv|parquet and interactions.csv|parquet inside)")

    items_path = _find_table(source, "items")
    inter_path = _find_table(source, "interactions")
    check_output(out, "dataset", [source], force)
    items_raw = read_table(items_path)
    inter_raw = read_table(inter_path)

    items, item_rej = _clean_items(items_raw, items_path.name)
    tab, tabular_columns, ignored_item_columns = _tabular(items_raw, item_rej.alive, items_path.suffix == ".csv")
    if len(items) == 0:
        raise DataContractError(f"{items_path.name}: no valid item rows remain ({len(item_rej.rows)} rejected)")
    item_index = dict(zip(items["item_id"], items["item_idx"]))

    events, inter_rej, ignored_inter_columns = _clean_interactions(inter_raw, inter_path.name, item_index, cfg)
    if len(events) == 0:
        reasons = Counter(r for _, _, r, _ in inter_rej.rows)
        raise DataContractError(f"{inter_path.name}: no valid interactions remain; rejected rows by reason: {dict(reasons)}")

    # users in order of first appearance in the interactions file
    user_ids = pd.unique(events["user_id"])
    user_index = {u: i for i, u in enumerate(user_ids, start=1)}
    users = pd.DataFrame({"user_idx": np.arange(1, len(user_ids) + 1, dtype=np.int64), "user_id": np.asarray(user_ids, dtype=object)})
    events.insert(0, "user_idx", events["user_id"].map(user_index).astype(np.int64))

    # cold-start items: a seeded draw among items with events, leaving at least one warm item
    with_events = np.unique(events["item_idx"].to_numpy())
    n_cold = int(math.floor(cfg.cold_item_share * len(with_events) + 0.5))
    n_cold = max(0, min(n_cold, len(with_events) - 1))
    rng = np.random.default_rng(cfg.seed)
    cold_idx = np.sort(rng.choice(with_events, size=n_cold, replace=False)) if n_cold else np.zeros(0, np.int64)
    cold = np.zeros(len(items) + 1, bool)
    cold[cold_idx] = True
    items["cold"] = cold[items["item_idx"].to_numpy()]

    ev = _split(events, cold, cfg.tie_break, cfg.seed, cfg.extra_test_events)
    cols = ["user_idx", "item_idx", "timestamp", "event", "weight", "seq_pos", "split"]
    ev_out = ev[cols].copy()
    ev_out["weight"] = ev_out["weight"].astype(np.float32)

    rejects = pd.concat([item_rej.frame(), inter_rej.frame()], ignore_index=True)

    with artifact_dir(out, "dataset", [source], force) as tmp:
        media_issues = _media(items, source, tmp, cfg.link_media)
        items_out = items.drop(columns=["_row"])
        items_out = items_out[["item_idx", "item_id", *TEXT_COLUMNS, *MEDIA_COLUMNS, "image_status", "audio_status", "cold"]]
        items_out = pd.concat([items_out.reset_index(drop=True), tab.reset_index(drop=True)], axis=1)

        _write_parquet(items_out, tmp / "items.parquet")
        _write_parquet(users, tmp / "users.parquet")
        _write_parquet(ev_out, tmp / "interactions" / "events.parquet")
        _write_parquet(ev_out[ev_out["split"] == "train"].reset_index(drop=True), tmp / "interactions" / "train.parquet")
        for name in ("valid", "test"):
            part = ev[ev["split"] == name][cols + ["segment", "cold_reason", "case_id"]].reset_index(drop=True)
            part["weight"] = part["weight"].astype(np.float32)
            _write_parquet(part, tmp / "interactions" / f"{name}.parquet")
        _write_parquet(rejects, tmp / "rejects.parquet")
        _write_parquet(media_issues, tmp / "media_issues.parquet")

        split_counts = ev["split"].value_counts()
        test = ev[ev["split"] == "test"]
        valid = ev[ev["split"] == "valid"]
        ties = ev.duplicated(["user_idx", "timestamp"], keep=False)
        stats = {
            "n_items": int(len(items)),
            "n_users": int(len(users)),
            "n_events": {"total": int(len(ev)), **{s: int(split_counts.get(s, 0)) for s in SPLIT_NAMES}},
            "n_cold_items": int(n_cold),
            "n_cold_items_with_cases": int(test.loc[test["cold_reason"] == "held_out", "item_idx"].nunique()),
            "valid_cases": int(split_counts.get("valid", 0)),
            "test_cases": {"warm": int((test["segment"] == "warm").sum()), "cold": int((test["segment"] == "cold").sum()),
                           **{f"cold_{r}": int((test["cold_reason"] == r).sum()) for r in SEGMENT_REASONS}},
            "valid_segments": {"warm": int((valid["segment"] == "warm").sum()), "cold": int((valid["segment"] == "cold").sum())},
            "ties": {"tie_break": cfg.tie_break, "events_in_a_same_timestamp_tie": int(ties.sum()),
                     "share": float(ties.mean()) if len(ev) else 0.0},
            "rows": {
                items_path.name: {"input": int(len(items_raw)), "kept": int(item_rej.alive.sum()), "rejected": len(item_rej.rows)},
                inter_path.name: {"input": int(len(inter_raw)), "kept": int(inter_rej.alive.sum()), "rejected": len(inter_rej.rows)},
            },
            "rejects": {
                items_path.name: dict(Counter(r for _, _, r, _ in item_rej.rows)),
                inter_path.name: dict(Counter(r for _, _, r, _ in inter_rej.rows)),
            },
            "media": {c: {s: int((items[f"{c}_status"] == s).sum()) for s in MEDIA_STATUSES} for c in MEDIA_COLUMNS},
            "timestamps": {"min": int(ev["timestamp"].min()), "max": int(ev["timestamp"].max()),
                           "min_iso": _iso(ev["timestamp"].min()), "max_iso": _iso(ev["timestamp"].max())},
        }
        meta = {
            "tabular_columns": tabular_columns,
            "text_columns": [c for c in TEXT_COLUMNS if c in items_raw.columns],
            "media_columns": [c for c in MEDIA_COLUMNS if c in items_raw.columns],
            "ignored_columns": {items_path.name: ignored_item_columns, inter_path.name: ignored_inter_columns},
            "sources": {"items": items_path.name, "interactions": inter_path.name},
            "id_order": {"items": "input row order", "users": "first appearance in the interactions file"},
            "event_order": {"ties": cfg.tie_break, "seed": cfg.seed},
            "segments": {"warm": "target item has training events", "cold": SEGMENT_REASONS},
        }
        atomic_write_json(tmp / "stats.json", stats)
        atomic_write_json(tmp / "meta.json", meta)
        write_manifest(tmp, step="ingest", params=cfg, inputs={"source": source}, kind="dataset")
    return out


def summary(dataset_path: str | os.PathLike) -> str:
    """A short human summary of a dataset artifact (what ``fusionrec ingest`` and ``make demo`` print)."""
    path = Path(dataset_path)
    st = read_json(path / "stats.json")
    ne = st["n_events"]
    lines = [
        f"dataset: {path}",
        f"  items {st['n_items']:,} ({st['n_cold_items']:,} cold-start), users {st['n_users']:,}",
        f"  interactions {ne['total']:,}: train {ne['train']:,}, valid {ne['valid']:,}, test {ne['test']:,}"
        + (f", unused cold-item events {ne['none']:,}" if ne.get("none") else ""),
        f"  test cases: warm {st['test_cases']['warm']:,}, cold {st['test_cases']['cold']:,}"
        + (f" (held out {st['test_cases']['cold_held_out']:,}, unseen in training {st['test_cases']['cold_unseen']:,})"
           if "cold_held_out" in st["test_cases"] else "") + f"; valid cases {st['valid_cases']:,}",
    ]
    for name, reasons in st["rejects"].items():
        rows = st["rows"][name]
        text = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none"
        lines.append(f"  {name}: {rows['input']:,} rows, kept {rows['kept']:,}, rejected {rows['rejected']:,} ({text})")
    issues = []
    for col, counts in st["media"].items():
        bad = {s: n for s, n in counts.items() if s in ("missing", "escape") and n}
        issues.append(f"{col} ok {counts.get('ok', 0):,}" + "".join(f", {s} {n}" for s, n in bad.items()))
    lines.append("  media: " + "; ".join(issues))
    lines.append(f"  time span: {st['timestamps']['min_iso']} .. {st['timestamps']['max_iso']}")
    return "\n".join(lines)
