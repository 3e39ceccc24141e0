"""Ingest step: data contract -> dataset artifact (round trip, bad inputs, splits, atomicity, CLI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fusionrec.data.dataset import DatasetArtifact
from fusionrec.data.ingest import DataContractError, IngestConfig, parse_timestamps, run, summary

ITEMS = """item_id,title,description,image,audio,price,genre
i1,Alpha,first item,media/i1.png,media/i1.wav,1.5,rock
i2,Beta,,media/i2.png,,2,pop
i3,Gamma,third item,,,3.25,jazz
i4,Delta,fourth,media/i4.png,,4,rock
i5,Epsilon,fifth,,,,pop
"""

# u1: 5 events (ties at t=300 broken by row order), u2: ISO timestamps, u3: two events only.
INTERACTIONS = """user_id,item_id,timestamp,event,weight
u1,i1,100,view,1
u2,i2,2020-01-01T00:00:00Z,click,
u1,i2,300,view,2
u1,i3,300,buy,1
u2,i3,2020-01-01T01:00:00+01:00,view,
u1,i4,400,view,
u2,i4,2020-01-02 00:00:00,view,0.5
u3,i1,50,view,
u1,i5,500,view,
u3,i2,60,view,
u2,i1,1577923200,view,
"""


def write_raw(folder: Path, items: str = ITEMS, interactions: str = INTERACTIONS, media: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text(items)
    (folder / "interactions.csv").write_text(interactions)
    if media:
        (folder / "media").mkdir(exist_ok=True)
        for name in ("i1.png", "i2.png", "i4.png", "i1.wav"):
            (folder / "media" / name).write_bytes(b"not decoded by ingest " + name.encode())
    return folder


def rejects(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / "rejects.parquet")


def assert_rows_balance(path: Path, source: Path) -> None:
    """kept + rejected == input rows, per file, checked against the files themselves."""
    st = json.loads((path / "stats.json").read_text())
    rej = rejects(path)
    ds = DatasetArtifact(path)
    for name, kept in (("items.csv", len(ds.items)), ("interactions.csv", len(ds.events))):
        n_input = len(pd.read_csv(source / name, dtype=str, keep_default_na=False))
        n_rej = int((rej["source"] == name).sum())
        assert kept + n_rej == n_input, name
        assert st["rows"][name] == {"input": n_input, "kept": kept, "rejected": n_rej}
        assert rej.loc[rej["source"] == name, "row"].is_unique


@pytest.fixture()
def ingested(tmp_path) -> tuple[Path, Path]:
    raw = write_raw(tmp_path / "raw")
    # row-order ties so the expected sequences below can be written out; the seeded tie-break has its own tests
    out = run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0, seed=0, tie_break="row"))
    return raw, out


def test_round_trip(ingested):
    raw, out = ingested
    ds = DatasetArtifact(out)
    assert ds.manifest["kind"] == "dataset" and ds.manifest["step"] == "ingest"
    it = ds.items
    assert it["item_idx"].tolist() == [1, 2, 3, 4, 5]
    assert it["item_id"].tolist() == ["i1", "i2", "i3", "i4", "i5"]
    assert it["title"].tolist() == ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]
    assert it["description"].iloc[1] is None and it["description"].iloc[0] == "first item"
    assert it["price"].dtype.kind == "f" and it["price"].iloc[2] == 3.25 and np.isnan(it["price"].iloc[4])
    assert it["genre"].tolist() == ["rock", "pop", "jazz", "rock", "pop"]
    assert ds.meta["tabular_columns"] == ["price", "genre"]
    assert ds.meta["text_columns"] == ["title", "description"]
    assert not it["cold"].any()
    # media copied into the artifact, paths relative to it
    assert it["image_status"].tolist() == ["ok", "ok", "absent", "ok", "absent"]
    assert it["audio_status"].tolist() == ["ok", "absent", "absent", "absent", "absent"]
    p = ds.media_path(it["image"].iloc[0])
    assert p.is_file() and p.read_bytes() == (raw / "media" / "i1.png").read_bytes()
    assert str(p.resolve()).startswith(str(out.resolve()))
    assert ds.media_path(it["image"].iloc[2]) is None
    assert ds.users["user_id"].tolist() == ["u1", "u2", "u3"]  # first appearance order

    ev = ds.events
    assert len(ev) == 11 and ev["timestamp"].dtype == np.int64 and ev["weight"].dtype == np.float32
    u1 = ev[ev["user_idx"] == 1]
    assert u1["seq_pos"].tolist() == [0, 1, 2, 3, 4]
    assert ds.item_ids[u1["item_idx"].to_numpy()].tolist() == ["i1", "i2", "i3", "i4", "i5"]  # tie at 300: row order
    assert u1["event"].tolist() == ["view", "view", "buy", "view", "view"]
    assert u1["weight"].tolist() == [1.0, 2.0, 1.0, 1.0, 1.0]  # empty weight -> 1.0
    u2 = ev[ev["user_idx"] == 2]
    # 2020-01-01T00:00:00Z == 01:00+01:00 (tie -> row order), naive ISO = UTC, epoch equal to its ISO form
    assert u2["timestamp"].tolist() == [1577836800, 1577836800, 1577923200, 1577923200]
    assert ds.item_ids[u2["item_idx"].to_numpy()].tolist() == ["i2", "i3", "i4", "i1"]

    # splits: leave-one-out per user with >= 3 events, u3 (2 events) all train
    assert u1["split"].tolist() == ["train", "train", "train", "valid", "test"]
    assert u2["split"].tolist() == ["train", "train", "valid", "test"]
    assert (ev[ev["user_idx"] == 3]["split"] == "train").all()
    for name in ("train", "valid", "test"):
        part = ds.split(name)
        assert len(part) == (ev["split"] == name).sum()
    assert len(ds.split("train")) == 7

    cases, hist = ds.eval_cases("test", max_len=4)
    # u1's target i5 has no train event (only u1 ever took it, last): cold by what the model saw
    assert cases["segment"].tolist() == ["cold", "warm"] and cases["cold_reason"].tolist()[0] == "unseen"
    assert hist.tolist() == [[1, 2, 3, 4], [0, 2, 3, 4]]
    vcases, vhist = ds.eval_cases("valid", max_len=6)
    assert vhist.tolist() == [[0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 2, 3]]
    all_ids = pd.concat([ds.split("valid")["case_id"], ds.split("test")["case_id"]])
    assert all_ids.is_unique and all_ids.dtype == np.int64

    st = ds.stats
    assert st["n_items"] == 5 and st["n_users"] == 3
    assert st["n_events"] == {"total": 11, "train": 7, "valid": 2, "test": 2, "none": 0}
    assert st["timestamps"]["min"] == 50
    assert len(rejects(out)) == 0 and len(pd.read_parquet(out / "media_issues.parquet")) == 0
    assert_rows_balance(out, raw)
    text = summary(out)
    assert "items 5" in text and "users 3" in text and "train 7" in text


def test_parquet_input_equals_csv(tmp_path, ingested):
    raw, out_csv = ingested
    pq_raw = tmp_path / "pq"
    write_raw(pq_raw)
    for name in ("items", "interactions"):
        df = pd.read_csv(pq_raw / f"{name}.csv", dtype=str, keep_default_na=False, na_values=[""])
        if name == "interactions":
            df["weight"] = pd.to_numeric(df["weight"])
        (pq_raw / f"{name}.csv").unlink()
        df.to_parquet(pq_raw / f"{name}.parquet", index=False)
    out = run(pq_raw, tmp_path / "ds_pq", IngestConfig(cold_item_share=0.0, tie_break="row"))
    a, b = DatasetArtifact(out_csv), DatasetArtifact(out)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert a.items["item_id"].tolist() == b.items["item_id"].tolist()


def test_parquet_typed_columns(tmp_path):
    """Integer ids, datetime timestamps and a nullable float weight from Parquet."""
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"item_id": [10, 20, 30], "year": [1999, 2005, 2010], "tags": [["a"], ["b"], []]}).to_parquet(raw / "items.parquet")
    pd.DataFrame({
        "user_id": [7, 7, 8, 7],
        "item_id": [10, 20, 30, 30],
        "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-01", "2020-01-03"]),
        "weight": [1.0, None, 2.5, 1.0],
    }).to_parquet(raw / "interactions.parquet")
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0)))
    assert ds.items["item_id"].tolist() == ["10", "20", "30"] and ds.users["user_id"].tolist() == ["7", "8"]
    assert ds.items["year"].tolist() == [1999, 2005, 2010]
    assert ds.meta["tabular_columns"] == ["year"] and ds.meta["ignored_columns"]["items.parquet"] == ["tags"]
    assert ds.events["timestamp"].tolist() == [1577836800, 1577923200, 1578009600, 1577836800]
    assert ds.events["weight"].tolist() == [1.0, 1.0, 1.0, 2.5]


def test_all_numeric_parquet_duplicate(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"item_id": [1, 2, 3]}).to_parquet(raw / "items.parquet")
    pd.DataFrame({"user_id": [1, 1, 1, 1, 1], "item_id": [1, 2, 3, 3, 1], "timestamp": [1, 2, 3, 3, 4],
                  "weight": [1.0, 1.0, 1.0, 1.0, 1.0]}).to_parquet(raw / "interactions.parquet")
    out = run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0))
    rej = rejects(out)
    assert rej[["row", "reason"]].values.tolist() == [[3, "exact duplicate"]] and "same values as row 2" in rej["detail"][0]
    assert len(DatasetArtifact(out).events) == 4


def test_media_outside_media_folder(tmp_path):
    items = ITEMS.replace("media/i2.png", "covers/i1.png").replace("media/i4.png", "./media/../media/i1.png")
    raw = write_raw(tmp_path / "raw", items, INTERACTIONS)
    (raw / "covers").mkdir()
    (raw / "covers" / "i1.png").write_bytes(b"cover")
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0)))
    img = ds.items["image"].tolist()
    assert img[0] == "media/i1.png" and img[3] == "media/i1.png"  # same file, one copy
    assert img[1] == "media/_root/covers/i1.png" and ds.media_path(img[1]).read_bytes() == b"cover"


def test_parse_timestamps_mixed():
    s = pd.Series(["1577836800", "2020-01-01T01:00:00+01:00", "2020-01-01 00:00:00", "2020-01-01", "1577836800.9",
                   "2019-12-31T19:00:00-0500", "not a date", "2020-13-45", "2020-01-01T00:00:00Z"], dtype=object)
    secs, ok = parse_timestamps(s)
    assert ok.tolist() == [True] * 6 + [False, False, True]
    assert set(secs[ok].tolist()) == {1577836800}
    secs, ok = parse_timestamps(pd.Series([1577836800, 1577836801]))
    assert secs.tolist() == [1577836800, 1577836801] and ok.all()
    secs, ok = parse_timestamps(pd.Series(pd.to_datetime(["2020-01-01", None])))
    assert secs[0] == 1577836800 and ok.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# bad input: clear errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "items, interactions, message",
    [
        ("title\nA\n", INTERACTIONS, r"items\.csv: missing required column 'item_id'"),
        (ITEMS, "user_id,item_id\nu1,i1\n", r"interactions\.csv: missing required column 'timestamp'"),
        (ITEMS, "item_id,when\ni1,1\n", r"interactions\.csv: missing required columns 'user_id', 'timestamp'"),
        ("", INTERACTIONS, r"items\.csv is empty"),
        (ITEMS, "", r"interactions\.csv is empty"),
        (ITEMS, "user_id,item_id,timestamp\n", r"interactions\.csv has no data rows"),
        ("item_id,cold\ni1,1\n", INTERACTIONS, r"items\.csv: column name 'cold' reserved"),
        (ITEMS, "user_id,item_id,timestamp\nu1,nope,1\nu1,,2\n", r"no valid interactions remain.*unknown item_id"),
    ],
)
def test_bad_input_errors(tmp_path, items, interactions, message):
    raw = write_raw(tmp_path / "raw", items, interactions)
    with pytest.raises(DataContractError, match=message):
        run(raw, tmp_path / "ds", IngestConfig())
    assert not (tmp_path / "ds").exists()


def test_table_form_errors(tmp_path):
    raw = write_raw(tmp_path / "raw")
    pd.read_csv(raw / "items.csv").to_parquet(raw / "items.parquet")
    with pytest.raises(DataContractError, match="both items.csv and items.parquet"):
        run(raw, tmp_path / "ds", IngestConfig())
    (raw / "items.csv").unlink()
    (raw / "items.parquet").unlink()
    with pytest.raises(DataContractError, match="no items.csv or items.parquet"):
        run(raw, tmp_path / "ds", IngestConfig())
    (raw / "items.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DataContractError, match="items.parquet: cannot read as Parquet"):
        run(raw, tmp_path / "ds", IngestConfig())


# ---------------------------------------------------------------------------------------------
# bad input: reject rows, kept + rejected == input
# ---------------------------------------------------------------------------------------------
def _reject_case(tmp_path, items=ITEMS, extra_interactions="", **cfg):
    raw = write_raw(tmp_path / "raw", items, INTERACTIONS + extra_interactions)
    out = run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0, **cfg))
    assert_rows_balance(out, raw)
    return out, rejects(out)


def test_duplicate_item_ids_keep_first(tmp_path):
    out, rej = _reject_case(tmp_path, items=ITEMS + "i2,Beta again,,,,9,pop\n,No id,,,,,\n")
    assert rej[["source", "row", "column", "reason"]].values.tolist() == [
        ["items.csv", 5, "item_id", "duplicate item_id"],
        ["items.csv", 6, "item_id", "missing item_id"],
    ]
    assert "already at row 1" in rej["detail"].iloc[0]
    assert json.loads(rej["raw"].iloc[0])["title"] == "Beta again"
    assert DatasetArtifact(out).items.loc[1, "title"] == "Beta"


@pytest.mark.parametrize(
    "line, column, reason",
    [
        ("u9,i1,yesterday,view,\n", "timestamp", "unparseable timestamp"),
        ("u9,i1,2020-02-30T00:00:00,view,\n", "timestamp", "unparseable timestamp"),
        ("u9,i1,,view,\n", "timestamp", "missing timestamp"),
        ("u9,nope,100,view,\n", "item_id", "unknown item_id"),
        ("u9,i1,100,view,heavy\n", "weight", "weight is not numeric"),
        ("u9,i1,100,view,inf\n", "weight", "weight is not numeric"),
        (",i1,100,view,\n", "user_id", "missing user_id"),
        ("u9, ,100,view,\n", "item_id", "missing item_id"),
        ("u1,i1,100,view,1\n", None, "exact duplicate"),
    ],
)
def test_bad_interaction_rows_rejected(tmp_path, line, column, reason):
    out, rej = _reject_case(tmp_path, extra_interactions=line)
    assert len(rej) == 1
    r = rej.iloc[0]
    assert (r["source"], r["row"], r["reason"]) == ("interactions.csv", 11, reason)
    assert r["column"] == column
    assert "row 11 (line 13)" in r["detail"]
    raw = json.loads(r["raw"])
    assert list(raw) == ["user_id", "item_id", "timestamp", "event", "weight"]
    assert DatasetArtifact(out).stats["rejects"]["interactions.csv"] == {reason: 1}


def test_k_core_iterated(tmp_path):
    # min_user_events=3 drops u3 (2 events); then i5 (1 event) falls under min_item_events=2,
    # which drops u1's i5 event; u1 still has 4 events so the filter stops.
    out, rej = _reject_case(tmp_path, min_user_events=3, min_item_events=2)
    assert sorted(rej["reason"].unique().tolist()) == ["k-core: item has fewer than 2 events", "k-core: user has fewer than 3 events"]
    ds = DatasetArtifact(out)
    assert ds.users["user_id"].tolist() == ["u1", "u2"]
    assert ds.n_items == 5  # the catalog keeps i5, only its events go
    assert 5 not in ds.events["item_idx"].tolist()


def test_media_escape_and_missing(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    items = ITEMS.replace("media/i2.png", "../secret.png").replace("media/i4.png", str(outside))
    items = items.replace("i3,Gamma,third item,,,", "i3,Gamma,third item,media/link.png,media/nothere.wav,")
    raw = write_raw(tmp_path / "raw", items, INTERACTIONS)
    os.symlink(outside, raw / "media" / "link.png")
    out = run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0))
    ds = DatasetArtifact(out)
    assert ds.items["image_status"].tolist() == ["ok", "escape", "escape", "escape", "absent"]
    assert ds.items["audio_status"].tolist() == ["ok", "absent", "missing", "absent", "absent"]
    assert ds.items["image"].iloc[1:4].isna().all()
    issues = pd.read_parquet(out / "media_issues.parquet")
    assert sorted(zip(issues["item_id"], issues["column"], issues["status"])) == [
        ("i2", "image", "escape"), ("i3", "audio", "missing"), ("i3", "image", "escape"), ("i4", "image", "escape")]
    assert ds.stats["media"]["image"] == {"ok": 1, "absent": 1, "missing": 0, "escape": 3}
    assert len(rejects(out)) == 0 and ds.n_items == 5  # a media issue drops nothing
    copied = {p.read_bytes() for p in (out / "media").rglob("*") if p.is_file()}
    assert b"secret" not in copied and len(copied) == 2


# ---------------------------------------------------------------------------------------------
# cold-start items
# ---------------------------------------------------------------------------------------------
def test_cold_items_never_trained_every_event_with_history_is_a_case(tmp_path):
    rng = np.random.default_rng(3)
    n_items, n_users = 30, 25
    items = "item_id,title\n" + "".join(f"it{i},Item {i}\n" for i in range(n_items))
    rows = [f"usr{u},it{rng.integers(n_items)},{int(t)}\n" for u in range(n_users) for t in rng.integers(0, 50, size=rng.integers(1, 12))]
    raw = write_raw(tmp_path / "raw", items, "user_id,item_id,timestamp\n" + "".join(rows), media=False)
    out = run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.2, seed=5))
    ds = DatasetArtifact(out)
    cold = set(ds.cold_items.tolist())
    with_events = ds.events["item_idx"].nunique()
    assert len(cold) == round(0.2 * with_events) and cold <= set(ds.events["item_idx"])
    ev = ds.events
    on_cold = ev["item_idx"].isin(cold)
    assert not ds.split("train")["item_idx"].isin(cold).any()
    assert not ds.split("valid")["item_idx"].isin(cold).any()
    assert (ev.loc[on_cold & (ev["seq_pos"] > 0), "split"] == "test").all()
    assert (ev.loc[on_cold & (ev["seq_pos"] == 0), "split"] == "none").all()
    test = ds.split("test")
    assert (test.loc[test["item_idx"].isin(cold), "segment"] == "cold").all()
    assert (test.loc[~test["item_idx"].isin(cold), "segment"] == "warm").all()
    # warm leave-one-out over warm events only, and at most one warm test case per user
    warm_test = test[test["segment"] == "warm"]
    assert warm_test["user_idx"].is_unique
    for u, g in ev[~on_cold].groupby("user_idx"):
        expect = ["train"] * (len(g) - 2) + ["valid", "test"] if len(g) >= 3 else ["train"] * len(g)
        assert g["split"].tolist() == expect
    cases, hist = ds.eval_cases("test", max_len=50)
    for (_, c), h in zip(cases.iterrows(), hist):
        seq = ev[ev["user_idx"] == c["user_idx"]]["item_idx"].tolist()[: c["seq_pos"]]
        assert h[h > 0].tolist() == seq[-50:] and len(seq) > 0
    assert ds.stats["test_cases"]["cold"] == int((on_cold & (ev["seq_pos"] > 0)).sum())
    # the same seed draws the same cold items
    again = DatasetArtifact(run(raw, tmp_path / "ds2", IngestConfig(cold_item_share=0.2, seed=5)))
    assert set(again.cold_items.tolist()) == cold


def test_extra_test_events_hold_out_earlier_positions_as_test_cases(tmp_path):
    """The secondary test (``extra_test_events``): k more warm events per user, the ones just before the
    validation event, become test cases; each user keeps a warm train event; none of them is trained on,
    and their histories are the user's earlier events like any case's."""
    rng = np.random.default_rng(4)
    n_items, n_users = 30, 40
    items = "item_id,title\n" + "".join(f"it{i},Item {i}\n" for i in range(n_items))
    rows = [f"usr{u},it{rng.integers(n_items)},{int(t)}\n" for u in range(n_users) for t in rng.integers(0, 50, size=rng.integers(1, 12))]
    raw = write_raw(tmp_path / "raw", items, "user_id,item_id,timestamp\n" + "".join(rows), media=False)
    plain = DatasetArtifact(run(raw, tmp_path / "plain", IngestConfig(cold_item_share=0.2, seed=5)))
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.2, seed=5, extra_test_events=2)))
    assert set(ds.cold_items.tolist()) == set(plain.cold_items.tolist())
    ev = ds.events
    assert ev[["user_idx", "item_idx", "seq_pos"]].equals(plain.events[["user_idx", "item_idx", "seq_pos"]])
    on_cold = ev["item_idx"].isin(set(ds.cold_items.tolist()))
    lengths = set()
    for _, g in ev[~on_cold].groupby("user_idx"):
        n = len(g)
        lengths.add(n)
        expect = (["train"] * (n - 4) + ["test", "test", "valid", "test"] if n >= 5 else ["train", "test", "valid", "test"] if n == 4
                  else ["train"] * (n - 2) + ["valid", "test"] if n == 3 else ["train"] * n)
        assert g["split"].tolist() == expect
    assert {3, 4} <= lengths and max(lengths) >= 5, lengths  # the data reaches every branch above
    # every event that was a case stays one; the extras are taken from training, nothing else moves
    was_case = plain.events["split"].isin(["valid", "test"])
    assert (ev.loc[was_case, "split"] == plain.events.loc[was_case, "split"]).all()
    moved = ev["split"] != plain.events["split"]
    assert (plain.events.loc[moved, "split"] == "train").all() and (ev.loc[moved, "split"] == "test").all()
    # nothing held out is trained on: the train sequences hold exactly the train events, in order
    train = ev[ev["split"] == "train"]
    seqs = {int(u): g["item_idx"].tolist() for u, g in train.groupby("user_idx", sort=False)}
    assert [s.tolist() for s in ds.train_sequences()] == [seqs[u] for u in sorted(seqs, key=list(train["user_idx"].unique()).index)]
    trained = set(train["item_idx"])
    test = ds.split("test")
    assert ((test["segment"] == "warm") == test["item_idx"].isin(trained)).all()
    assert int(moved.sum()) > 0 and len(test) == len(plain.split("test")) + int(moved.sum())
    cases, hist = ds.eval_cases("test", max_len=50)
    for (_, c), h in zip(cases.iterrows(), hist):
        seq = ev[ev["user_idx"] == c["user_idx"]]["item_idx"].tolist()[: c["seq_pos"]]
        assert h[h > 0].tolist() == seq[-50:]


# ---------------------------------------------------------------------------------------------
# atomic write
# ---------------------------------------------------------------------------------------------
def test_failure_midway_leaves_previous_artifact(tmp_path, monkeypatch):
    raw = write_raw(tmp_path / "raw")
    out = tmp_path / "ds"
    run(raw, out, IngestConfig(cold_item_share=0.0))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))

    import fusionrec.data.ingest as ingest

    real = ingest._write_parquet

    def failing(df, path):
        if path.name == "test.parquet":
            raise OSError("disk full (injected)")
        real(df, path)

    monkeypatch.setattr(ingest, "_write_parquet", failing)
    with pytest.raises(OSError, match="injected"):
        run(raw, out, IngestConfig(cold_item_share=0.5))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    assert not DatasetArtifact(out).items["cold"].any()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(OSError):
        run(raw, tmp_path / "fresh", IngestConfig())
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli(tmp_path):
    from fusionrec.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0 and "--cold-item-share" in res.output and "--min-user-events" in res.output
    raw = write_raw(tmp_path / "raw")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest:\n  cold_item_share: 0.4\n  seed: 1\n")
    res = runner.invoke(app, ["ingest", str(raw), str(tmp_path / "ds"), "--config", str(cfg), "--seed", "2", "--set", "min_user_events=3"])
    assert res.exit_code == 0, res.output
    assert "users 2" in res.output and "cold-start" in res.output
    params = DatasetArtifact(tmp_path / "ds").manifest["params"]
    assert (params["cold_item_share"], params["seed"], params["min_user_events"]) == (0.4, 2, 3)
    res = runner.invoke(app, ["ingest", str(tmp_path), str(tmp_path / "bad")])
    assert res.exit_code == 2 and "no items.csv or items.parquet" in res.output


# ---------------------------------------------------------------------------------------------
# the built-in demo catalog (conftest's session fixtures)
# ---------------------------------------------------------------------------------------------
def test_demo_catalog_ingests(tiny_raw, tiny_dataset):
    ds = DatasetArtifact(tiny_dataset)
    corrupt = json.loads((tiny_raw / "truth" / "corrupt.json").read_text())
    kinds = {r["item_id"]: r["kind"] for r in corrupt}
    items = ds.items.set_index("item_id")
    # a missing file is recorded (status + media_issues), not fatal; corrupt bytes are copied
    # as they are (the encoders decode and mask them)
    for item_id, kind in kinds.items():
        if kind == "image_missing_file":
            assert items.loc[item_id, "image_status"] == "missing"
        elif kind == "audio_missing_file":
            assert items.loc[item_id, "audio_status"] == "missing"
        elif kind.startswith("image_"):
            assert items.loc[item_id, "image_status"] == "ok" and ds.media_path(items.loc[item_id, "image"]).is_file()
        elif kind.startswith("audio_"):
            assert items.loc[item_id, "audio_status"] == "ok" and ds.media_path(items.loc[item_id, "audio"]).is_file()
    issues = pd.read_parquet(tiny_dataset / "media_issues.parquet")
    missing = sorted(k for k in kinds.values() if k.endswith("missing_file"))
    assert len(issues) == len(missing) and set(issues["status"]) == {"missing"}
    n_input = len(pd.read_csv(tiny_raw / "interactions.csv"))
    assert len(ds.events) + len(rejects(tiny_dataset)) == n_input
    assert ds.n_items == len(pd.read_csv(tiny_raw / "items.csv"))
    assert set(ds.meta["tabular_columns"]) >= {"price", "format"}
    # cold items: none in train/valid, cold test cases exist, every case has a history
    cold = set(ds.cold_items.tolist())
    assert len(cold) == round(0.1 * ds.events["item_idx"].nunique())
    assert not ds.split("train")["item_idx"].isin(cold).any() and not ds.split("valid")["item_idx"].isin(cold).any()
    cases, hist = ds.eval_cases("test", max_len=20)
    assert (cases["segment"] == "cold").sum() == ds.stats["test_cases"]["cold"] > 0
    assert (hist[:, -1] > 0).all()
    # every image that is "ok" lives inside the artifact (self-contained)
    ok = ds.items[ds.items["image_status"] == "ok"]
    assert all(ds.media_path(p).is_file() for p in ok["image"])
    assert "cold-start" in summary(tiny_dataset)


# ---------------------------------------------------------------------------------------------
# evaluation protocol: tie-break and segments (issue 13, items 2 and 3)
# ---------------------------------------------------------------------------------------------
def _tied_log(n_users: int = 60, per_user: int = 8) -> str:
    """Every user rates ``per_user`` items in ONE second, rows sorted by item id (as MovieLens is)."""
    rows = [f"u{u},it{i:02d},1000\n" for u in range(n_users) for i in range(per_user)]
    return "user_id,item_id,timestamp\n" + "".join(rows)


def test_equal_timestamps_are_not_ordered_by_input_row(tmp_path):
    """Old behaviour (ties by row order): every tied sequence ascends by item id and every test target is the
    largest id. Now ties follow a seeded permutation: about half the tied transitions ascend."""
    items = "item_id\n" + "".join(f"it{i:02d}\n" for i in range(8))
    raw = write_raw(tmp_path / "raw", items, _tied_log(), media=False)
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0, seed=0)))
    ev = ds.events
    ascending = [np.mean(np.diff(g["item_idx"].to_numpy()) > 0) for _, g in ev.groupby("user_idx")]
    # 60 users x 7 transitions = 420 tied transitions; under a random order the share ascending is 0.5 with sd ~0.03
    assert 0.35 < float(np.mean(ascending)) < 0.65
    test = ds.split("test")
    assert test["item_idx"].nunique() > 4, "test targets would all be the highest item id under row order"
    assert ds.stats["ties"]["events_in_a_same_timestamp_tie"] == len(ev) and ds.stats["ties"]["tie_break"] == "random"
    # seeded: the same seed gives the same order, another seed another order
    again = DatasetArtifact(run(raw, tmp_path / "ds2", IngestConfig(cold_item_share=0.0, seed=0))).events
    other = DatasetArtifact(run(raw, tmp_path / "ds3", IngestConfig(cold_item_share=0.0, seed=1))).events
    assert again["item_idx"].tolist() == ev["item_idx"].tolist()
    assert other["item_idx"].tolist() != ev["item_idx"].tolist()
    # the old order stays available, explicitly
    row = DatasetArtifact(run(raw, tmp_path / "ds4", IngestConfig(cold_item_share=0.0, tie_break="row"))).events
    assert all((np.diff(g["item_idx"].to_numpy()) > 0).all() for _, g in row.groupby("user_idx"))


def test_tie_break_never_reorders_distinct_timestamps(tmp_path):
    raw = write_raw(tmp_path / "raw")
    for seed in range(5):
        ev = DatasetArtifact(run(raw, tmp_path / f"ds{seed}", IngestConfig(cold_item_share=0.0, seed=seed))).events
        for _, g in ev.groupby("user_idx"):
            assert (np.diff(g["timestamp"].to_numpy()) >= 0).all()
        u1 = ev[ev["user_idx"] == 1]
        assert DatasetArtifact(tmp_path / f"ds{seed}").item_ids[u1["item_idx"].to_numpy()][[0, 3, 4]].tolist() == ["i1", "i4", "i5"]


def test_segments_follow_what_training_saw(tmp_path):
    """A test target that is not a held-out item but has no train event (new in time) is cold, not warm."""
    items = "item_id\n" + "".join(f"i{i}\n" for i in range(1, 6)) + "new\n"
    inter = "user_id,item_id,timestamp\n" + "".join(f"u{u},i{i},{10 * i}\n" for u in (2, 3) for i in (1, 2, 3, 4))
    inter += "u1,i4,5\nu1,i1,10\nu1,i2,20\nu1,i3,30\nu1,new,100\n"  # u1 trains on i4; its last event: an item no one saw before
    raw = write_raw(tmp_path / "raw", items, inter, media=False)
    ds = DatasetArtifact(run(raw, tmp_path / "ds", IngestConfig(cold_item_share=0.0)))
    test = ds.split("test").merge(ds.users, on="user_idx").set_index("user_id")
    new_idx = int(ds.items.loc[ds.items["item_id"] == "new", "item_idx"].iloc[0])
    assert test.loc["u1", "item_idx"] == new_idx
    assert test.loc["u1", "segment"] == "cold" and test.loc["u1", "cold_reason"] == "unseen"  # old behaviour: "warm"
    assert (test.loc[["u2", "u3"], "segment"] == "warm").all() and test.loc[["u2", "u3"], "cold_reason"].isna().all()
    trained = set(ds.split("train")["item_idx"])
    for name in ("valid", "test"):
        part = ds.split(name)
        assert ((part["segment"] == "warm") == part["item_idx"].isin(trained)).all()
    st = ds.stats["test_cases"]
    assert st == {"warm": 2, "cold": 1, "cold_held_out": 0, "cold_unseen": 1}
    assert "unseen in training 1" in summary(tmp_path / "ds")
