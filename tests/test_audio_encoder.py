"""Audio encoders: the TF checkpoint reader, the PyTorch musicnn port on real and synthesized
music, and robustness to bad files (every bad file a masked row with a reason, never a crash).

The musicnn model is loaded once per session; real music comes from the PyPI package
``immich-memories-music`` (royalty-free Ogg/Opus tracks, 48 kHz stereo, ~30 s each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fusionrec.encoders import audio as A
from fusionrec.encoders import musicnn_port
from fusionrec.encoders.registry import available, build, default_encoder
from fusionrec.encoders.tf_checkpoint import CheckpointError, read_checkpoint, read_index

SR = 22050


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mtt() -> A.MusicnnEncoder:
    return build("audio", "musicnn", model="MTT_musicnn", device="cpu", max_patches=3)


@pytest.fixture(scope="session")
def tracks() -> Path:
    from immich_memories_music import tracks_dir

    return tracks_dir()


def _clicks(bpm: float = 140, sec: float = 6.0, seed: int = 0) -> np.ndarray:
    """A drum-machine-like pattern: a pitched-down kick every beat, a noise hat every half beat."""
    rng = np.random.default_rng(seed)
    x = np.zeros(int(sec * SR))
    for k, start in enumerate(np.arange(0, sec, 30 / bpm)):
        i = int(start * SR)
        n = min(len(x) - i, int(0.15 * SR))
        t = np.arange(n) / SR
        if k % 2 == 0:
            x[i:i + n] += 0.9 * np.sin(2 * np.pi * (50 + 100 * np.exp(-t * 30)) * t) * np.exp(-t * 20)
        x[i:i + n] += 0.3 * rng.standard_normal(n) * np.exp(-t * 60)
    return x.astype(np.float32)


def _chord(sec: float = 6.0, root: float = 220.0) -> np.ndarray:
    """A sustained major chord of sines with a slow 1 s fade-in."""
    t = np.arange(int(sec * SR)) / SR
    x = sum(np.sin(2 * np.pi * root * r * t) for r in (1, 5 / 4, 3 / 2, 2)) * 0.15
    return (x * np.minimum(1.0, t)).astype(np.float32)


def _noise(sec: float = 6.0, seed: int = 1) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(sec * SR))).astype(np.float32)


def _top(tags: dict[str, float], n: int) -> set[str]:
    return set(list(tags)[:n])


# --------------------------------------------------------------------------------------------------
# checkpoint reader
# --------------------------------------------------------------------------------------------------
EXPECTED_SHAPES = {
    "batch_normalization/gamma": (1,), "conv2d/kernel": (7, 38, 1, 204), "conv2d_1/kernel": (7, 67, 1, 204),
    "conv2d_2/kernel": (128, 1, 1, 51), "conv2d_3/kernel": (64, 1, 1, 51), "conv2d_4/kernel": (32, 1, 1, 51),
    "conv2d_5/kernel": (7, 561, 1, 64), "conv2d_6/kernel": (7, 64, 1, 64), "conv2d_7/kernel": (7, 64, 1, 64),
    "batch_normalization_9/moving_variance": (1506,), "dense/kernel": (1506, 200), "dense/bias": (200,),
    "batch_normalization_10/moving_mean": (200,), "dense_1/kernel": (200, 50), "dense_1/bias": (50,),
}


@pytest.mark.parametrize("model", ["MTT_musicnn", "MSD_musicnn"])
def test_checkpoint_reader_loads_every_model_variable(model):
    prefix = str(musicnn_port.musicnn_dir() / model) + "/"
    index = read_index(Path(prefix + ".index"))
    assert len(index) == 150  # 64 model variables + Adam slots + beta powers
    assert any("Adam" in k for k in index) and "beta1_power" in index
    tensors = read_checkpoint(prefix)
    assert len(tensors) == 64 and not any("Adam" in k or "power" in k for k in tensors)
    for name, shape in EXPECTED_SHAPES.items():
        assert tensors[name].shape == shape and tensors[name].dtype == np.float32, name
        assert np.isfinite(tensors[name]).all()
    assert (tensors["batch_normalization_9/moving_variance"] > 0).all()
    net = musicnn_port.MusicnnNet(n_classes=50)
    assert sorted(net.load_tf_weights(tensors)) == sorted(tensors)  # every variable used, none missing


def test_checkpoint_reader_rejects_damage(tmp_path):
    pytest.importorskip("google_crc32c")  # CRC verification is optional (kfp's google deps bring it)
    src = musicnn_port.musicnn_dir() / "MTT_musicnn"
    dst = tmp_path / "ck"
    dst.mkdir()
    shutil.copy(src / ".index", dst / ".index")
    data = bytearray((src / ".data-00000-of-00001").read_bytes())
    off = read_index(dst / ".index")["dense/kernel"]["offset"]
    data[off + 10] ^= 0xFF
    (dst / ".data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC32C mismatch for tensor 'dense/kernel'"):
        read_checkpoint(str(dst) + "/")
    (dst / ".index").write_bytes(b"not an sstable" * 10)
    with pytest.raises(CheckpointError, match="bad footer magic"):
        read_checkpoint(str(dst) + "/")


def test_missing_musicnn_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(musicnn_port, "_PACKAGE", "musicnn_not_installed_here")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps musicnn==0\.1\.0"):
        build("audio", "musicnn")


def test_registry_entries():
    assert default_encoder("audio") == "musicnn"
    assert {"musicnn", "logmel-stats"} <= set(available("audio"))
    with pytest.raises(ValueError, match="MSD_musicnn"):
        build("audio", "musicnn", model="nope")


# --------------------------------------------------------------------------------------------------
# the port on real music
# --------------------------------------------------------------------------------------------------
ACOUSTIC = ["calm/calm_acoustic_1.opus", "happy/happy_acoustic_2.opus"]
ELECTRONIC = ["energetic/energetic_electronic_2.opus", "tender/tender_electronic_1.opus"]


def test_tags_on_real_music(mtt, tracks):
    files = [tracks / f for f in ACOUSTIC + ELECTRONIC]
    probs, reasons = mtt.tag_files(files)
    assert reasons == [None] * 4
    lab = {name: i for i, name in enumerate(mtt.labels)}
    assert len(mtt.labels) == 50 and mtt.labels[:3] == ["guitar", "classical", "slow"]
    top3 = [{mtt.labels[i] for i in np.argsort(-p)[:3]} for p in probs]
    for k in range(2):  # acoustic guitar tracks: 'guitar' first, no electronic tags on top
        assert mtt.labels[int(np.argmax(probs[k]))] == "guitar", top3[k]
        assert not top3[k] & {"techno", "electronic", "synth"}
    for k in range(2, 4):  # electronic tracks: electronic/techno/synth on top, guitar unlikely
        assert len(top3[k] & {"techno", "electronic", "synth"}) >= 2, top3[k]
        assert probs[k, lab["guitar"]] < 0.5 * min(probs[0, lab["guitar"]], probs[1, lab["guitar"]])
    electronic_score = probs[:, [lab["electronic"], lab["techno"], lab["synth"]]].sum(1)
    assert electronic_score[2:].min() > 3 * electronic_score[:2].max()


def test_msd_model_tags_real_music(tracks):
    enc = build("audio", "musicnn", model="MSD_musicnn", device="cpu", max_patches=2)
    assert enc.labels[:3] == ["rock", "pop", "alternative"]
    probs, _ = enc.tag_files([tracks / ACOUSTIC[0], tracks / ELECTRONIC[0]])
    lab = {name: i for i, name in enumerate(enc.labels)}
    assert enc.labels[int(np.argmax(probs[1]))] == "electronic"
    assert probs[0, [lab["acoustic"], lab["folk"]]].sum() > 2 * probs[1, [lab["acoustic"], lab["folk"]]].sum()


def test_crops_of_a_track_are_closer_than_other_tracks(mtt, tracks):
    crops = {}
    for f in [ACOUSTIC[0], ELECTRONIC[0], ELECTRONIC[1]]:
        x, sr = sf.read(tracks / f, dtype="float32")
        crops[f] = [mtt.embed(x[int(a * sr):int((a + 6) * sr)], sr) for a in (3.0, 18.0)]
    names = list(crops)
    for f in names:
        same = np.linalg.norm(crops[f][0] - crops[f][1])
        for g in names:
            if g != f:
                assert same < np.linalg.norm(crops[f][0] - crops[g][0]), (f, g)
                assert same < np.linalg.norm(crops[f][1] - crops[g][1]), (f, g)


# --------------------------------------------------------------------------------------------------
# synthesized clips
# --------------------------------------------------------------------------------------------------
def test_synthesized_clips_tags_and_embeddings(mtt):
    sig = {"clicks": _clicks(140), "clicks_slow": _clicks(100, seed=3), "chord": _chord(), "chord_c": _chord(root=261.6),
           "noise": _noise()}
    tags = {k: mtt.tags(v, SR) for k, v in sig.items()}
    assert _top(tags["clicks"], 5) & {"beat", "drums", "techno", "beats"}
    assert _top(tags["clicks_slow"], 5) & {"beat", "drums", "techno", "beats"}
    assert _top(tags["chord"], 3) & {"slow", "quiet", "ambient", "soft"}
    assert _top(tags["chord"], 5).isdisjoint({"beat", "drums", "techno", "fast", "loud"})
    assert _top(tags["noise"], 3) & {"loud", "fast", "noise", "metal"}
    e = {k: mtt.embed(v, SR) for k, v in sig.items()}
    d = lambda a, b: float(np.linalg.norm(e[a] - e[b]))  # noqa: E731
    assert d("clicks", "clicks_slow") < 0.5 * d("clicks", "chord")
    assert d("chord", "chord_c") < 0.5 * min(d("chord", "clicks"), d("chord", "noise"))
    assert e["clicks"].shape == (200,) and e["clicks"].dtype == np.float32
    # deterministic and sample-rate robust: same chord at 44.1 kHz ~ same embedding as at 22.05 kHz
    np.testing.assert_array_equal(mtt.embed(sig["chord"], SR), e["chord"])
    t = np.arange(6 * 44100) / 44100
    chord44 = (sum(np.sin(2 * np.pi * 220 * r * t) for r in (1, 5 / 4, 3 / 2, 2)) * 0.15 * np.minimum(1, t)).astype(np.float32)
    assert np.linalg.norm(mtt.embed(chord44, 44100) - e["chord"]) < 0.2 * d("chord", "clicks")


def test_logmel_stats_separates_clips():
    enc = build("audio", "logmel-stats")
    f = {k: enc.features(A.waveform_patches(v, SR, 2)) for k, v in
         {"clicks": _clicks(140), "clicks_slow": _clicks(100, seed=3), "chord": _chord(), "noise": _noise()}.items()}
    assert f["clicks"].shape == (384,) and enc.dim == 384
    d = lambda a, b: float(np.linalg.norm(f[a] - f[b]))  # noqa: E731
    assert d("clicks", "clicks_slow") < 0.3 * min(d("clicks", "chord"), d("clicks", "noise"))


# --------------------------------------------------------------------------------------------------
# robustness: a catalog of good and bad files
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media(tmp_path_factory, tracks) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio_media")
    t8 = np.arange(2 * 8000) / 8000
    p: dict[str, Path] = {}

    def write(name: str, data, sr: int, **kw) -> None:
        p[name] = root / name
        sf.write(p[name], data, sr, **kw)

    write("ok_mono_8k.wav", (0.3 * np.sin(2 * np.pi * 440 * t8)).astype(np.float32), 8000)
    write("ok_stereo_44k.flac", np.stack([_clicks(140)[:2 * SR]] * 2, axis=1), SR)  # 22.05 kHz stereo flac
    write("ok_48k.ogg", _noise(2.0)[: 2 * SR], 48000, format="OGG", subtype="VORBIS")
    write("ok_odd_rate.wav", _chord(2.0), 44101)
    write("ok_one_second.wav", _chord(1.0), SR)  # shorter than a patch: repeat-padded
    write("silent.wav", np.zeros(SR * 2, np.float32), SR)
    nan = _chord(2.0)
    nan[100:200] = np.nan
    write("nan.wav", nan, SR, subtype="FLOAT")
    write("too_short.wav", _chord(0.1), SR)
    write("empty.wav", np.zeros(0, np.float32), SR)
    p["zero_bytes.wav"] = root / "zero_bytes.wav"
    p["zero_bytes.wav"].write_bytes(b"")
    p["garbage.flac"] = root / "garbage.flac"
    p["garbage.flac"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = (root / "ok_mono_8k.wav").read_bytes()
    p["truncated_header.wav"] = root / "truncated_header.wav"
    p["truncated_header.wav"].write_bytes(good[:30])
    p["truncated_data.wav"] = root / "truncated_data.wav"  # header promises 2 s, half is there
    p["truncated_data.wav"].write_bytes(good[: len(good) // 2])
    opus = (tracks / ACOUSTIC[0]).read_bytes()
    p["truncated.opus"] = root / "truncated.opus"
    p["truncated.opus"].write_bytes(opus[: len(opus) // 3])
    p["missing.wav"] = root / "does_not_exist.wav"
    p["a_folder.wav"] = root / "a_folder.wav"
    p["a_folder.wav"].mkdir()
    return p


EXPECT_REASON = {
    "silent.wav": "silent", "nan.wav": "NaN", "too_short.wav": "too short", "empty.wav": "empty",
    "zero_bytes.wav": "empty audio file", "garbage.flac": "undecodable", "truncated_header.wav": "undecodable",
    "missing.wav": "missing", "a_folder.wav": "missing",
}


@pytest.mark.parametrize("name", ["musicnn", "logmel-stats"])
def test_bad_files_are_masked_with_reasons(name, mtt, media):
    enc = mtt if name == "musicnn" else build("audio", "logmel-stats")
    keys = list(media)
    vecs, reasons = enc.encode_batch([media[k] for k in keys])
    assert vecs.shape == (len(keys), enc.dim) and vecs.dtype == np.float32 and np.isfinite(vecs).all()
    for k, v, r in zip(keys, vecs, reasons):
        if k.startswith("ok_"):
            assert r is None, (k, r)
            assert np.abs(v).sum() > 0, k
        elif k in EXPECT_REASON:
            assert r is not None and EXPECT_REASON[k] in r, (k, r)
            assert not v.any(), k
        else:  # truncated data: decoded as far as it goes, or masked; never a crash
            assert r is None or "undecodable" in r, (k, r)
            assert (r is None) == bool(np.abs(v).sum() > 0), k
    again, reasons2 = enc.encode_batch([media[k] for k in keys])  # deterministic
    np.testing.assert_array_equal(again, vecs)
    assert reasons2 == reasons
    one, _ = enc.encode_batch([media["ok_stereo_44k.flac"]])  # batching does not change a row
    np.testing.assert_allclose(one[0], vecs[keys.index("ok_stereo_44k.flac")], rtol=1e-4, atol=1e-5)


def test_long_clip_reads_evenly_spaced_crops(tmp_path, mtt):
    sr = 8000
    t = np.arange(130 * sr) / sr  # 130 s > max_decode_seconds (120 s): only the crops are read
    x = (0.3 * np.sin(2 * np.pi * (200 + 5 * t) * t)).astype(np.float32)  # a slow upward sweep
    path = tmp_path / "long.wav"
    sf.write(path, x, sr)
    segs, crops = A.decode_segments(path, max_patches=3)
    assert crops and len(segs) == 3 and all(len(s) == A.PATCH_SAMPLES for s in segs)
    pats = A.load_patches(path, max_patches=3)
    assert pats.shape == (3, A.PATCH_FRAMES, A.N_MELS)
    # evenly spaced: the sweep's pitch rises, so the patches' spectral centroids strictly increase
    centroid = (pats.mean(1) * np.arange(A.N_MELS)).sum(1) / pats.mean(1).sum(1)
    assert np.all(np.diff(centroid) > 1)
    mid = A.load_patches(path, max_patches=3, max_decode_seconds=200)  # decoded whole, same patch rule
    assert mid.shape == (3, A.PATCH_FRAMES, A.N_MELS)
    vecs, reasons = mtt.encode_batch([path])
    assert reasons == [None] and np.isfinite(vecs).all() and vecs.any()


def test_demo_catalog_audio_reveals_mood(tiny_raw, mtt):
    """On the built-in demo catalog (synthesized 3 s previews whose tempo/chord/register follow the
    item's mood), corrupt files are masked and the embedding's nearest neighbour shares the mood."""
    import pandas as pd

    items = pd.read_csv(tiny_raw / "items.csv").merge(pd.read_parquet(tiny_raw / "truth" / "items.parquet"), on="item_id")
    paths = [tiny_raw / p if isinstance(p, str) else tiny_raw / "no_audio" for p in items["audio"]]
    vecs, reasons = mtt.encode_batch(paths)
    bad = {i for i, r in enumerate(reasons) if r is not None}
    corrupt = {i for i, c in enumerate(items["corrupt"]) if isinstance(c, str) and c.startswith("audio")}
    assert corrupt and corrupt <= bad
    ok = np.array([r is None for r in reasons])
    v = vecs[ok]
    v = (v - v.mean(0)) / (v.std(0) + 1e-6)
    dist = ((v[:, None] - v[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    mood = items["shown_mood"].to_numpy()[ok]
    acc = float((mood[dist.argmin(1)] == mood).mean())
    chance = float(pd.Series(mood).value_counts(normalize=True).max())
    assert acc > max(0.6, 2 * chance), (acc, chance)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(mtt, media):
    gpu = build("audio", "musicnn", model="MTT_musicnn", device="cuda", max_patches=3)
    assert next(gpu.net.parameters()).is_cuda and not next(mtt.net.parameters()).is_cuda  # CPU model untouched
    paths = [media[k] for k in media if k.startswith("ok_")]
    cpu_v, cpu_r = mtt.encode_batch(paths)
    gpu_v, gpu_r = gpu.encode_batch(paths)
    assert gpu_r == cpu_r
    np.testing.assert_allclose(gpu_v, cpu_v, rtol=1e-2, atol=1e-2)  # TF32/cuDNN vs CPU float32
