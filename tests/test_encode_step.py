"""The encode step on the tiny demo dataset: artifact contract, masks, content-hash cache, shards + merge, CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

MODS = ("text", "image", "tabular")
DIMS = {"text": 384, "image": 1280}


@pytest.fixture(scope="session")
def encoders(tmp_path_factory) -> dict:
    """Encoders loaded once per session (shared with test_encoders.py through ``shared_encoder``)."""
    from fusionrec.encoders import encode

    if "FUSIONREC_TEST_CACHE" not in os.environ:
        os.environ["FUSIONREC_TEST_CACHE"] = str(tmp_path_factory.mktemp("fusionrec_cache"))
    if not encode._SHARED:
        os.environ["FUSIONREC_CACHE"] = os.environ["FUSIONREC_TEST_CACHE"]
    return {m: encode.shared_encoder(m) for m in MODS}


@pytest.fixture(scope="module")
def first_runs(tiny_dataset, encoders, tmp_path_factory) -> dict:
    """One unsharded run per modality into a fresh cache: {modality: (artifact, cache_dir)}."""
    from fusionrec.encoders.encode import EncodeConfig, run

    root = tmp_path_factory.mktemp("enc")
    out = {}
    for m in MODS:
        cache = root / f"cache-{m}"
        out[m] = (run(tiny_dataset, root / m, EncodeConfig(modality=m, cache_dir=str(cache), batch_size=16), encoder=encoders[m]), cache)
    return out


@pytest.mark.parametrize("modality", MODS)
def test_artifact_contract_and_masks(modality, first_runs, tiny_dataset):
    from fusionrec.artifacts import read_manifest
    from fusionrec.data.dataset import DatasetArtifact

    path, _ = first_runs[modality]
    ds = DatasetArtifact(tiny_dataset)
    n = ds.n_items
    emb = np.load(path / "embeddings.npy", allow_pickle=False)
    mask = np.load(path / "mask.npy", allow_pickle=False)
    man = read_manifest(path, kind="embeddings")
    assert emb.dtype == np.float32 and emb.shape[0] == n + 1 and mask.shape == (n + 1,) and mask.dtype == bool
    assert emb.shape[1] == man["dim"] == DIMS.get(modality, emb.shape[1])
    assert not emb[0].any() and not mask[0]
    assert not emb[~mask].any()
    assert (np.abs(emb[mask]).sum(1) > 0).all()
    assert man["modality"] == modality and man["encoder"] and man["weights"] is not None and man["preprocessing"]
    reasons = pd.read_parquet(path / "reasons.parquet")
    assert list(reasons.columns) == ["item_idx", "item_id", "reason"]
    assert sorted(reasons["item_idx"]) == sorted(np.flatnonzero(~mask[1:]) + 1)
    assert (reasons["item_id"].to_numpy() == ds.item_ids[reasons["item_idx"].to_numpy()]).all()
    c = man["counts"]
    assert c["present"] == int(mask.sum()) and c["masked"] == n - int(mask.sum())
    assert c["encoded"] == n - c["skipped"] and c["cached"] == 0
    if modality == "image":
        items = ds.items.set_index("item_idx")
        by_idx = dict(zip(reasons["item_idx"], reasons["reason"]))
        not_ok = items.index[items["image_status"] != "ok"]
        assert len(not_ok) >= 1
        for i in not_ok:  # masked with the dataset status, without a decode attempt
            assert by_idx[i] == items.loc[i, "image_status"]
        corrupt = [r for i, r in by_idx.items() if items.loc[i, "image_status"] == "ok"]
        assert corrupt and all(r.startswith(("corrupt image", "image too large")) for r in corrupt)
        assert c["skipped"] == len(not_ok)
    else:
        assert mask[1:].all(), reasons


@pytest.mark.parametrize("modality", MODS)
def test_sharded_then_merged_equals_unsharded(modality, first_runs, tiny_dataset, encoders, tmp_path):
    from fusionrec.artifacts import ArtifactError, read_manifest
    from fusionrec.encoders.encode import EncodeConfig, merge, run

    full, _ = first_runs[modality]
    shards = [
        run(tiny_dataset, tmp_path / f"s{i}", EncodeConfig(modality=modality, shard=i, num_shards=3, cache=False, batch_size=7), encoder=encoders[modality])
        for i in range(3)
    ]
    assert read_manifest(shards[0])["kind"] == "embeddings_shard"
    with pytest.raises(ArtifactError, match="missing \\[1\\]"):
        merge([shards[0], shards[2]], tmp_path / "bad")
    merged = merge(shards[::-1], tmp_path / "merged")
    man = read_manifest(merged, kind="embeddings")
    import torch

    a, b = np.load(full / "embeddings.npy", allow_pickle=False), np.load(merged / "embeddings.npy", allow_pickle=False)
    if modality == "tabular":
        # bit for bit: standardisation/hashing is element-wise arithmetic with statistics fitted on
        # all items, so no kernel ever sees a batch shape
        np.testing.assert_array_equal(a, b)
    elif torch.cuda.is_available():
        # cuDNN/cuBLAS may pick different kernels (TF32 included) for different batch shapes
        np.testing.assert_allclose(a, b, atol=1e-4)
    else:
        # Equal to float noise, not bit for bit: batches of 7 and of 16 pad and tile differently, and
        # CPU matrix kernels (AVX2 vs AVX-512, oneDNN blocking) round differently per shape: 1.3e-7
        # measured on an AVX-512 Xeon. 1e-6 on unit-norm vectors is ~10 float32 ulps of a cosine.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(full / "mask.npy"), np.load(merged / "mask.npy"))
    pd.testing.assert_frame_equal(pd.read_parquet(full / "reasons.parquet"), pd.read_parquet(merged / "reasons.parquet"))
    assert man["dim"] == read_manifest(full)["dim"] and man["merged_from"] == 3


@pytest.mark.parametrize("modality", MODS)
def test_second_run_encodes_nothing(modality, first_runs, tiny_dataset, encoders, tmp_path):
    from fusionrec.artifacts import read_manifest
    from fusionrec.encoders.encode import EncodeConfig, run

    first, cache = first_runs[modality]
    again = run(tiny_dataset, tmp_path / "again", EncodeConfig(modality=modality, cache_dir=str(cache)), encoder=encoders[modality])
    c = read_manifest(again)["counts"]
    assert c["encoded"] == 0
    assert c["cached"] == read_manifest(first)["counts"]["encoded"] > 0
    for f in ("embeddings.npy", "mask.npy"):
        np.testing.assert_array_equal(np.load(first / f), np.load(again / f))


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_changing_one_item_reencodes_only_that_one(first_runs, tiny_dataset, encoders, tmp_path):
    from PIL import Image

    from fusionrec.artifacts import read_manifest, save_parquet
    from fusionrec.encoders.encode import EncodeConfig, run

    ds2 = _copy_dataset(tiny_dataset, tmp_path / "dataset")
    items = pd.read_parquet(ds2 / "items.parquet")
    ok = items[items["image_status"] == "ok"]
    # text: one description changes
    t_idx = int(items["item_idx"].iloc[3])
    items.loc[items["item_idx"] == t_idx, "description"] = "A brand new description about volcanoes and lava."
    save_parquet(items, ds2 / "items.parquet")
    # image: one (decodable) image file changes
    first_img = np.load(first_runs["image"][0] / "mask.npy")
    i_row = next(r for _, r in ok.iterrows() if first_img[int(r["item_idx"])])
    i_idx, img_path = int(i_row["item_idx"]), ds2 / i_row["image"]
    with Image.open(img_path) as im:
        im.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(img_path)

    for modality, changed in (("text", t_idx), ("image", i_idx)):
        first, cache = first_runs[modality]
        out = run(ds2, tmp_path / modality, EncodeConfig(modality=modality, cache_dir=str(cache)), encoder=encoders[modality])
        c = read_manifest(out)["counts"]
        assert c["encoded"] == 1, (modality, c)
        a, b = np.load(first / "embeddings.npy"), np.load(out / "embeddings.npy")
        others = np.ones(len(a), bool)
        others[changed] = False
        np.testing.assert_array_equal(a[others], b[others])
        assert not np.allclose(a[changed], b[changed])


def test_text_template_and_default_text(tiny_dataset):
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.encoders.encode import build_texts

    items = pd.DataFrame({"title": ["Red Bike", None, None], "description": ["Fast.", "Only a description", None], "brand": ["Acme", "Zed", None]})
    assert build_texts(items, {}) == ["Red Bike. Fast.", "Only a description.", ""]
    assert build_texts(items, {}, "{title} by {brand}") == ["Red Bike by Acme", "by Zed", ""]
    with pytest.raises(ValueError, match="unknown item column"):
        build_texts(items, {}, "{title} {colour}")
    ds = DatasetArtifact(tiny_dataset)
    texts = build_texts(ds.items, ds.meta)
    assert len(texts) == ds.n_items and all(t for t in texts)


def test_tabular_uses_meta_columns(first_runs, tiny_dataset):
    from fusionrec.artifacts import read_manifest
    from fusionrec.data.dataset import DatasetArtifact

    man = read_manifest(first_runs["tabular"][0])
    cols = [s["column"] for s in man["preprocessing"]["columns"]]
    assert sorted(cols) == sorted(DatasetArtifact(tiny_dataset).meta["tabular_columns"])


def test_cli_encode_shards_and_merge(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from fusionrec.cli import app

    runner = CliRunner()
    cache = str(tmp_path / "cache")
    for i in range(2):
        res = runner.invoke(app, ["encode", str(tiny_dataset), str(tmp_path / f"s{i}"), "-m", "tabular", "--shard", str(i), "--num-shards", "2", "--cache-dir", cache])
        assert res.exit_code == 0, res.output
    assert "encoded" in res.output and "dim" in res.output
    res = runner.invoke(app, ["encode-merge", str(tmp_path / "full"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    assert res.exit_code == 0, res.output
    n = int(pd.read_parquet(tiny_dataset / "items.parquet").shape[0])
    assert np.load(tmp_path / "full" / "embeddings.npy").shape[0] == n + 1
    assert f"items     {n}" in res.output
    res = runner.invoke(app, ["encode", str(tiny_dataset), str(tmp_path / "x"), "-m", "video"])
    assert res.exit_code == 2 and "modality" in res.output
    res = runner.invoke(app, ["encode", str(tiny_dataset), str(tmp_path / "x"), "-m", "image", "-e", "nope"])
    assert res.exit_code == 2 and "unknown image encoder 'nope'" in res.output


def test_audio_step_masks_by_status_and_decoding(tiny_dataset, tmp_path):
    """The step with the audio registry's weight-free encoder: dataset statuses and undecodable files masked."""
    pytest.importorskip("fusionrec.encoders.audio")
    from fusionrec.artifacts import read_manifest
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.encoders.encode import EncodeConfig, run

    out = run(tiny_dataset, tmp_path / "audio", EncodeConfig(modality="audio", encoder="logmel-stats", cache_dir=str(tmp_path / "cache")))
    mask = np.load(out / "mask.npy")
    emb = np.load(out / "embeddings.npy")
    items = DatasetArtifact(tiny_dataset).items.set_index("item_idx")
    reasons = dict(pd.read_parquet(out / "reasons.parquet")[["item_idx", "reason"]].itertuples(index=False))
    assert not mask[0] and not emb[~mask].any() and set(reasons) == set(np.flatnonzero(~mask[1:]) + 1)
    not_ok = items.index[items["audio_status"] != "ok"]
    assert len(not_ok) >= 1 and all(reasons[i] == items.loc[i, "audio_status"] for i in not_ok)
    assert any(items.loc[i, "audio_status"] == "ok" for i in reasons)  # the demo's corrupt audio, masked by the decoder
    assert read_manifest(out)["counts"]["skipped"] == len(not_ok)
