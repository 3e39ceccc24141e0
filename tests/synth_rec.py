"""A tiny synthetic dataset artifact + embeddings artifacts (in the documented layouts) for model tests.

Items have two latent attributes; modality ``text`` reveals the first, ``image`` the second
(a few items miss a modality). Users prefer one value of each and walk between liked items.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.artifacts import artifact_dir, atomic_write_json, save_npy, save_parquet, write_manifest


def make_dataset(out: Path, n_items: int = 48, n_users: int = 40, events: int = 12, cold_share: float = 0.1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, n_items + 1)
    b = rng.integers(0, 3, n_items + 1)
    cold = np.zeros(n_items + 1, bool)
    cold[rng.choice(np.arange(1, n_items + 1), max(1, int(cold_share * n_items)), replace=False)] = True
    rows = []
    for u in range(1, n_users + 1):
        pa, pb = rng.integers(0, 4), rng.integers(0, 3)
        liked = np.where((a == pa) | (b == pb))[0]
        liked = liked[liked > 0]
        seq = rng.choice(liked, events, replace=True)
        for pos, i in enumerate(seq):
            rows.append((u, int(i), 1_600_000_000 + 60 * pos, pos))
    ev = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "seq_pos"])
    ev["event"] = None
    ev["weight"] = np.float32(1.0)
    ev["split"] = "train"
    ev["segment"] = None
    is_cold = cold[ev["item_idx"].to_numpy()]
    for u, g in ev.groupby("user_idx"):
        warm = g.index[~is_cold[g.index]]
        if len(warm) >= 3:
            ev.loc[warm[-1], "split"] = "test"
            ev.loc[warm[-1], "segment"] = "warm"
            ev.loc[warm[-2], "split"] = "valid"
        for i in g.index[is_cold[g.index]]:
            ev.loc[i, "split"] = "test" if ev.loc[i, "seq_pos"] > 0 else "dropped"
            ev.loc[i, "segment"] = "cold"
    ev = ev[ev["split"] != "dropped"].copy()
    ev["seq_pos"] = ev.groupby("user_idx").cumcount().astype(np.int32)
    with artifact_dir(out) as tmp:
        items = pd.DataFrame({"item_idx": np.arange(1, n_items + 1), "item_id": [f"it{i}" for i in range(1, n_items + 1)],
                              "title": [f"item {i}" for i in range(1, n_items + 1)], "cold": cold[1:]})
        save_parquet(items, tmp / "items.parquet")
        save_parquet(pd.DataFrame({"user_idx": np.arange(1, n_users + 1), "user_id": [f"u{u}" for u in range(1, n_users + 1)]}), tmp / "users.parquet")
        (tmp / "interactions").mkdir()
        save_parquet(ev.drop(columns=["segment"]), tmp / "interactions" / "events.parquet")
        save_parquet(ev[ev["split"] == "train"].drop(columns=["segment"]), tmp / "interactions" / "train.parquet")
        valid = ev[ev["split"] == "valid"].drop(columns=["segment"]).copy()
        valid["case_id"] = np.arange(len(valid), dtype=np.int64)
        save_parquet(valid, tmp / "interactions" / "valid.parquet")
        test = ev[ev["split"] == "test"].copy()
        test["case_id"] = np.arange(len(test), dtype=np.int64)
        save_parquet(test, tmp / "interactions" / "test.parquet")
        atomic_write_json(tmp / "stats.json", {"n_items": n_items, "n_users": n_users})
        atomic_write_json(tmp / "meta.json", {"tabular_columns": [], "text_columns": []})
        write_manifest(tmp, step="ingest", kind="dataset")
    np.save(out / "_latent.npy", np.stack([a, b], 1))
    return out


def make_embeddings(dataset: Path, out_root: Path, seed: int = 0) -> list[Path]:
    lat = np.load(dataset / "_latent.npy")
    n = len(lat)
    rng = np.random.default_rng(seed + 1)
    outs = []
    for modality, col, k, d in (("text", 0, 4, 16), ("image", 1, 3, 12)):
        emb = rng.normal(0, 0.3, (n, d)).astype(np.float32)
        emb[np.arange(n), lat[:, col]] += 2.0
        mask = np.ones(n, bool)
        mask[0] = False
        mask[rng.choice(np.arange(1, n), 3, replace=False)] = False
        emb[~mask] = 0
        out = out_root / modality
        with artifact_dir(out) as tmp:
            save_npy(tmp / "embeddings.npy", emb)
            save_npy(tmp / "mask.npy", mask)
            write_manifest(tmp, step="encode", kind="embeddings", modality=modality, dim=d)
        outs.append(out)
    return outs
