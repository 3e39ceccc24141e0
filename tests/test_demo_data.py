"""The built-in demo catalog: real files, corrupt media on purpose, determinism, per-modality signal, oracle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from fusionrec.data.demo import CORRUPT_KINDS, EVENT_KINDS, EVENT_WEIGHTS, GENRES, MOODS, STYLES, DemoConfig, _VOCAB, generate, oracle_metrics, read_summary

TINY = DemoConfig(n_items=60, n_users=40, events_per_user=12, seed=7)


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def raw(tiny_raw: Path) -> Path:
    return tiny_raw


@pytest.fixture(scope="module")
def truth(raw: Path) -> pd.DataFrame:
    return pd.read_parquet(raw / "truth" / "items.parquet").set_index("item_id")


@pytest.fixture(scope="module")
def items(raw: Path) -> pd.DataFrame:
    return pd.read_csv(raw / "items.csv", keep_default_na=False)


def _loo_nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy on standardized features."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        classes = np.unique(labels[keep])
        cents = np.stack([x[keep & (labels == c)].mean(0) for c in classes])
        correct += classes[np.argmin(((cents - x[i]) ** 2).sum(1))] == labels[i]
    return correct / len(x)


def test_layout_and_schema(raw: Path, items: pd.DataFrame, truth: pd.DataFrame) -> None:
    for rel in ("items.csv", "interactions.csv", "README.txt", "truth/items.parquet", "truth/users.parquet", "truth/params.json", "truth/corrupt.json"):
        assert (raw / rel).is_file(), rel
    assert list(items.columns) == ["item_id", "title", "description", "image", "audio", "price", "format"]
    assert len(items) == TINY.n_items and items["item_id"].is_unique
    assert pd.api.types.is_float_dtype(items["price"]) and (items["price"] > 0).all()
    assert set(items["format"]) <= {"short", "standard", "long", "series"}
    assert items["image"].str.startswith("media/images/").all() and items["audio"].str.startswith("media/audio/").all()
    # item ids are opaque: no attribute name inside them
    for word in (*GENRES, *STYLES, *MOODS):
        assert not items["item_id"].str.contains(word).any()
    assert set(truth.index) == set(items["item_id"])
    s = read_summary(raw)
    assert (s["items"], s["users"]) == (TINY.n_items, TINY.n_users)


def test_media_are_real_and_corrupt_ones_fail(raw: Path, items: pd.DataFrame, truth: pd.DataFrame) -> None:
    kinds = truth["corrupt"].to_dict()
    assert set(CORRUPT_KINDS) <= set(kinds.values()), "every kind of corruption appears at least once"
    for row in items.itertuples():
        kind = kinds[row.item_id]
        img, wav = raw / row.image, raw / row.audio
        if kind == "image_missing_file":
            assert not img.exists()
        elif kind in ("image_truncated", "image_garbage"):
            assert img.exists()
            with pytest.raises(Exception):
                with Image.open(img) as im:
                    im.load()
        else:
            with Image.open(img) as im:
                im.load()
                assert im.size == (96, 96) and im.mode == "RGB"
        if kind == "audio_missing_file":
            assert not wav.exists()
        elif kind in ("audio_empty", "audio_garbage"):
            assert wav.exists()
            with pytest.raises(Exception):
                sf.read(wav)
        else:
            y, sr = sf.read(wav)
            assert sr == 16000 and y.ndim == 1 and len(y) == 48000 and np.abs(y).max() > 0.1
        if kind == "description_empty":
            assert row.description == ""
        else:
            assert len(row.description) > 40 and len(row.title) > 3


def test_same_seed_same_bytes_other_seed_differs(raw: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", TINY)
    assert _tree_hash(again) == _tree_hash(raw)
    other = generate(tmp_path / "other", TINY.model_copy(update={"seed": 8}))
    assert _tree_hash(other) != _tree_hash(raw)
    assert (other / "items.csv").read_bytes() != (raw / "items.csv").read_bytes()


def test_text_reveals_genre(items: pd.DataFrame, truth: pd.DataFrame) -> None:
    hits_right = 0
    n = 0
    for row in items.itertuples():
        if not row.description:
            continue
        text = f"{row.title} {row.description}".lower()
        counts = [sum(text.count(w.lower()) for w in (*_VOCAB[g]["noun"], *_VOCAB[g]["adj"])) for g in GENRES]
        n += 1
        hits_right += GENRES[int(np.argmax(counts))] == truth.loc[row.item_id, "shown_genre"]
    assert hits_right / n >= 0.95
    # the shown genre is the true genre for most items (per-item noise, not a different world)
    assert (truth["shown_genre"] == truth["genre"]).mean() >= 0.8


def test_image_reveals_style(raw: Path, items: pd.DataFrame, truth: pd.DataFrame) -> None:
    feats, labels = [], []
    for row in items.itertuples():
        if truth.loc[row.item_id, "corrupt"].startswith("image"):
            continue
        arr = np.asarray(Image.open(raw / row.image).convert("RGB"), dtype=np.float64) / 255.0
        feats.append(np.concatenate([arr.mean((0, 1)), arr.std((0, 1))]))
        labels.append(truth.loc[row.item_id, "shown_style"])
    acc = _loo_nearest_centroid_accuracy(np.array(feats), np.array(labels))
    assert acc >= 0.9, acc


def test_audio_reveals_mood(raw: Path, items: pd.DataFrame, truth: pd.DataFrame) -> None:
    feats, labels = [], []
    for row in items.itertuples():
        if truth.loc[row.item_id, "corrupt"].startswith("audio"):
            continue
        y, sr = sf.read(raw / row.audio, dtype="float32")
        spec = np.abs(np.fft.rfft(y))
        f = np.fft.rfftfreq(len(y), 1 / sr)
        low = f < 1500
        centroid = (spec[low] * f[low]).sum() / spec[low].sum()  # register of the chord
        click_energy = (spec[f > 3000] ** 2).sum() / (spec**2).sum()  # loudness/rate of percussive clicks
        feats.append([np.log(centroid), np.log(click_energy + 1e-9)])
        labels.append(truth.loc[row.item_id, "shown_mood"])
    acc = _loo_nearest_centroid_accuracy(np.array(feats), np.array(labels))
    assert acc >= 0.9, acc


def test_price_tracks_tier(items: pd.DataFrame, truth: pd.DataFrame) -> None:
    tiers = truth.loc[items["item_id"], "tier"].to_numpy()
    med = {t: items["price"][tiers == t].median() for t in ("budget", "standard", "premium")}
    assert med["budget"] < med["standard"] < med["premium"]


def test_interactions(raw: Path, items: pd.DataFrame) -> None:
    inter = pd.read_csv(raw / "interactions.csv")
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "event", "weight"]
    assert set(inter["item_id"]) <= set(items["item_id"])
    users = pd.read_parquet(raw / "truth" / "users.parquet")
    assert set(inter["user_id"]) == set(users["user_id"]) and len(users) == TINY.n_users
    per_user = inter.groupby("user_id", sort=False)
    assert per_user["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert not inter.duplicated(["user_id", "item_id"]).any(), "users never repeat an item"
    sizes = per_user.size()
    assert sizes.min() >= 3 and abs(sizes.mean() - TINY.events_per_user) <= 3
    assert inter.duplicated(["user_id", "timestamp"]).any(), "a few tied timestamps exercise stable tie-breaking"
    assert set(inter["event"]) <= set(EVENT_KINDS) and {"view", "play"} <= set(inter["event"])
    assert (inter["weight"] == inter["event"].map(EVENT_WEIGHTS)).all()


def test_event_kinds_predict_the_next_item(tmp_path: Path, monkeypatch) -> None:
    """Stronger kinds are rarer and go with a next item sharing more attributes; kinds have their own RNG stream."""
    import fusionrec.data.demo as demo

    cfg = DemoConfig(n_items=300, n_users=200, events_per_user=20, seed=3)
    generate(tmp_path / "a", cfg)
    inter = pd.read_csv(tmp_path / "a" / "interactions.csv")
    truth = pd.read_parquet(tmp_path / "a" / "truth" / "items.parquet").set_index("item_id")
    share = inter["event"].value_counts(normalize=True)
    assert share["view"] > share["play"] > share["complete"] > share["purchase"] > 0.02, share.to_dict()
    inter["next"] = inter.groupby("user_id")["item_id"].shift(-1)
    pairs = inter.dropna(subset=["next"])
    shared = sum((truth.loc[pairs["item_id"], a].to_numpy() == truth.loc[pairs["next"], a].to_numpy()).astype(int)
                 for a in ("genre", "style", "mood"))
    mean_shared = pd.Series(shared, index=pairs.index).groupby(pairs["event"]).mean()
    assert mean_shared["purchase"] > mean_shared["complete"] > mean_shared["play"] > mean_shared["view"], mean_shared.to_dict()
    # the kinds come from their own stream: another kind table leaves users, items and timestamps as they were
    monkeypatch.setattr(demo, "KIND_GIVEN_SHARED", np.full((4, 4), 0.25))
    generate(tmp_path / "b", cfg)
    other = pd.read_csv(tmp_path / "b" / "interactions.csv")
    cols = ["user_id", "item_id", "timestamp"]
    assert other[cols].equals(inter[cols]) and not other["event"].equals(inter["event"])


def test_kinds_oracle_knows_more(tmp_path: Path) -> None:
    """The oracle that also reads the last event's kind ranks better than the one that does not."""
    from fusionrec.data.ingest import IngestConfig
    from fusionrec.data.ingest import run as ingest

    generate(tmp_path / "raw", DemoConfig(n_items=300, n_users=300, events_per_user=20, seed=1))
    ingest(tmp_path / "raw", tmp_path / "ds", IngestConfig())
    plain = oracle_metrics(tmp_path / "raw", tmp_path / "ds")["overall"]["ndcg@10"]
    kinds = oracle_metrics(tmp_path / "raw", tmp_path / "ds", with_kinds=True)["overall"]["ndcg@10"]
    assert kinds > plain * 1.03, (plain, kinds)


def test_users_follow_their_tastes(raw: Path, truth: pd.DataFrame) -> None:
    """Consumed items match the user's liked genre far more often than chance."""
    inter = pd.read_csv(raw / "interactions.csv")
    users = pd.read_parquet(raw / "truth" / "users.parquet").set_index("user_id")
    liked = users.loc[inter["user_id"], "likes_genre"].str.split("|").to_numpy()
    genre = truth.loc[inter["item_id"], "genre"].to_numpy()
    match = np.mean([g in lk for g, lk in zip(genre, liked)])
    chance = users["likes_genre"].str.count(r"\|").add(1).mean() / len(GENRES)
    assert match > chance + 0.2, (match, chance)  # tiny catalog: users soon exhaust their liked items


def test_cli_help_and_run(tmp_path: Path) -> None:
    from fusionrec.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["demo-data", "--help"])
    assert res.exit_code == 0 and "--events-per-user" in res.output
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("demo:\n  n_items: 30\n  n_users: 9\n  seed: 3\n")
    res = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--config", str(cfg), "--users", "12", "--events-per-user", "5"])
    assert res.exit_code == 0, res.output
    assert "items:          30" in res.output and "users:          12" in res.output
    assert read_summary(tmp_path / "d")["config"]["seed"] == 3
    res = runner.invoke(app, ["demo-data", str(tmp_path / "e"), "--items", "3"])
    assert res.exit_code == 2 and "n_items" in res.output


def test_oracle_ceiling(tiny_raw: Path, tiny_dataset: Path) -> None:
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.metrics import per_case_metrics, ranks_from_topk, summarize

    oracle = oracle_metrics(tiny_raw, tiny_dataset)
    assert set(oracle) == {"overall", "warm", "cold"}
    for seg in oracle.values():
        assert 0.0 <= seg["ndcg@10"] <= seg["ndcg@50"] <= 1.0 and seg["recall@10"] <= seg["recall@50"]
    ds = DatasetArtifact(tiny_dataset)
    cases, hist = ds.eval_cases("test", max_len=64)
    assert oracle["overall"]["n"] == len(cases) > 0
    # popularity (train counts, history excluded) is the floor the oracle must clear
    counts = np.bincount(ds.split("train")["item_idx"], minlength=ds.n_items + 1).astype(float)
    scores = np.tile(counts, (len(cases), 1))
    scores[:, 0] = -np.inf
    rows, cols = np.nonzero(hist > 0)
    scores[rows, hist[rows, cols]] = -np.inf
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :50]
    pop = summarize(per_case_metrics(ranks_from_topk(topk, cases["item_idx"].to_numpy())))
    assert oracle["overall"]["ndcg@10"] > pop["ndcg@10"] + 0.05


def test_content_oracle_changes_only_what_nobody_can_know(tiny_raw: Path, tiny_dataset: Path) -> None:
    """The content oracle (issue 14): unseen items lose their hidden popularity, so the cold ranking changes; it stays
    far above a random ranking on cold items (attributes, tastes and the previous item carry it)."""
    from fusionrec.data.dataset import DatasetArtifact

    full = oracle_metrics(tiny_raw, tiny_dataset)
    content = oracle_metrics(tiny_raw, tiny_dataset, content_only=True)
    ds = DatasetArtifact(tiny_dataset)
    assert content["cold"]["n"] == full["cold"]["n"] > 0
    assert content["cold"]["ndcg@50"] != full["cold"]["ndcg@50"]  # hidden popularity is really gone from the cold ranking
    assert content["cold"]["recall@10"] > 1.5 * 10 / ds.n_items, content["cold"]


def test_demo_oracle_cli(tiny_raw: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import json

    from fusionrec.cli import app

    res = CliRunner().invoke(app, ["demo-oracle", str(tiny_raw), str(tiny_dataset), "--out", str(tmp_path / "o.json")])
    assert res.exit_code == 0, res.output
    assert "overall" in res.output and "ndcg@10" in res.output
    figures = json.loads((tmp_path / "o.json").read_text())
    assert figures["overall"] == pytest.approx(oracle_metrics(tiny_raw, tiny_dataset)["overall"])
    res = CliRunner().invoke(app, ["demo-oracle", str(tmp_path), str(tiny_dataset)])
    assert res.exit_code == 2 and "truth" in res.output
