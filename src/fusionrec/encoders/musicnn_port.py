"""A PyTorch port of musicnn (Pons & Serra, 2019), loading the TF checkpoints of the PyPI package.

The network follows ``musicnn/models.py::build_musicnn`` exactly (inference mode):

- front end, on a [batch, 187 frames, 96 mel] log-mel patch: batch norm of the input, then
  timbral convolutions ([7 x 38] and [7 x 67] over time x frequency, 204 filters each, time
  padded by 3) and temporal convolutions ([128|64|32 x 1], 51 filters each, TF ``'same'``
  padding, i.e. ``(k-1)//2`` before and ``k//2`` after), each ReLU -> batch norm -> max over
  frequency; concatenated to 561 channels per frame;
- mid end: three [7 x channels] convolutions (64 filters; ReLU -> batch norm), the 2nd and 3rd
  residual; front-end and mid-end outputs concatenated (753 channels);
- back end: max and mean over time, *interleaved* (TF concatenates them on a trailing axis and
  flattens: ``[max_0, mean_0, max_1, mean_1, ...]``), batch norm, dense 200 + ReLU, batch norm
  (= the "penultimate" 200-d embedding), dense to 50 tag logits, sigmoid.

TF layouts are converted on load: conv kernels ``[kh, kw, in, out] -> [out, in, kh, kw]``, dense
kernels ``[in, out] -> [out, in]``; batch norm uses the checkpoint's moving mean/variance with TF's
default epsilon 1e-3. Names follow TF's creation order (``conv2d``, ``conv2d_1``, ...,
``batch_normalization``, ``batch_normalization_1``, ...).

Example:
    >>> net, labels = load_musicnn("MTT_musicnn")
    >>> with torch.no_grad():
    ...     logits, emb = net(torch.zeros(2, 187, 96))
    >>> emb.shape, logits.shape, len(labels)
    (torch.Size([2, 200]), torch.Size([2, 50]), 50)
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusionrec.encoders.tf_checkpoint import read_checkpoint

MUSICNN_MODELS = ("MTT_musicnn", "MSD_musicnn")
N_FRAMES = 187  # librosa.time_to_frames(3 s, sr=16000, n_fft=512, hop=256) + 1, as musicnn's extractor
N_MELS = 96
TF_BN_EPS = 1e-3
INSTALL_HINT = "pip install --no-deps musicnn==0.1.0"


class MusicnnMissingError(FileNotFoundError):
    """The musicnn package (which ships the checkpoints) is not installed."""


_PACKAGE = "musicnn"


def musicnn_dir() -> Path:
    """The installed ``musicnn`` package folder, found without importing it (it imports tensorflow)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnMissingError(
            "the audio encoder 'musicnn' needs the checkpoints of the PyPI package musicnn, which is not "
            f"installed; install it without its (tensorflow, old numpy) dependencies: `{INSTALL_HINT}` "
            "(the Makefile does this), or pick the no-weights encoder 'logmel-stats'")
    return Path(list(spec.submodule_search_locations)[0])


def musicnn_labels(model: str) -> list[str]:
    """Tag names of ``model`` read from ``musicnn/configuration.py`` (parsed, not imported)."""
    tree = ast.parse((musicnn_dir() / "configuration.py").read_text())
    want = "MTT_LABELS" if model.startswith("MTT") else "MSD_LABELS"
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == want for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise MusicnnMissingError(f"{want} not found in {musicnn_dir() / 'configuration.py'}")


def _bn(n: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(n, eps=TF_BN_EPS)


class MusicnnNet(nn.Module):
    """musicnn (front end 7774timbraltemporal, dense mid end, global-pool back end), inference only."""

    def __init__(self, n_classes: int = 50, n_mels: int = N_MELS, midend: int = 64, backend: int = 200):
        super().__init__()
        self.bn_input = nn.BatchNorm2d(1, eps=TF_BN_EPS)
        f_timbral, f_temporal = int(1.6 * 128), int(1.6 * 32)
        self.timbral = nn.ModuleList([nn.Conv2d(1, f_timbral, (7, int(r * n_mels))) for r in (0.4, 0.7)])
        self.timbral_bn = nn.ModuleList([_bn(f_timbral) for _ in range(2)])
        self.temporal_k = (128, 64, 32)
        self.temporal = nn.ModuleList([nn.Conv2d(1, f_temporal, (k, 1)) for k in self.temporal_k])
        self.temporal_bn = nn.ModuleList([_bn(f_temporal) for _ in self.temporal_k])
        front = 2 * f_timbral + 3 * f_temporal  # 561
        self.mid = nn.ModuleList([nn.Conv1d(front, midend, 7, padding=3)] +
                                 [nn.Conv1d(midend, midend, 7, padding=3) for _ in range(2)])
        self.mid_bn = nn.ModuleList([_bn(midend) for _ in range(3)])
        pooled = 2 * (front + 3 * midend)  # 1506
        self.pool_bn = _bn(pooled)
        self.dense = nn.Linear(pooled, backend)
        self.dense_bn = _bn(backend)
        self.out = nn.Linear(backend, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [batch, frames, mels] log-mel -> (tag logits [batch, classes], penultimate [batch, 200])."""
        x = self.bn_input(x.unsqueeze(1))  # [B, 1, T, F]
        feats = []
        xp = F.pad(x, (0, 0, 3, 3))  # time padded by 3 each side, frequency 'valid'
        for conv, bn in zip(self.timbral, self.timbral_bn):
            feats.append(bn(F.relu(conv(xp)).amax(dim=3)))  # max over frequency -> [B, C, T]
        for k, conv, bn in zip(self.temporal_k, self.temporal, self.temporal_bn):
            y = conv(F.pad(x, (0, 0, (k - 1) // 2, k // 2)))  # TF 'same' along time
            feats.append(bn(F.relu(y).amax(dim=3)))
        front = torch.cat(feats, dim=1)  # [B, 561, T]
        h1 = self.mid_bn[0](F.relu(self.mid[0](front)))
        h2 = self.mid_bn[1](F.relu(self.mid[1](h1))) + h1
        h3 = self.mid_bn[2](F.relu(self.mid[2](h2))) + h2
        z = torch.cat([front, h1, h2, h3], dim=1)  # [B, 753, T]
        pooled = torch.stack([z.amax(dim=2), z.mean(dim=2)], dim=2).flatten(1)  # interleaved as TF's flatten
        pen = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.out(pen), pen

    # -- weights -----------------------------------------------------------------------------------
    def load_tf_weights(self, tensors: dict[str, np.ndarray]) -> list[str]:
        """Copy TF variables into this module; returns the TF names used (all must be present)."""
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        used: list[str] = []

        def take(name: str) -> torch.Tensor:
            if name not in t:
                raise KeyError(f"checkpoint lacks variable '{name}'")
            used.append(name)
            return t[name]

        def conv(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            sfx = f"_{i}" if i else ""
            return take(f"conv2d{sfx}/kernel").permute(3, 2, 0, 1), take(f"conv2d{sfx}/bias")

        def bn(mod: nn.Module, i: int) -> None:
            sfx = f"_{i}" if i else ""
            for attr, tf_name in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                  ("running_var", "moving_variance")):
                _copy(getattr(mod, attr), take(f"batch_normalization{sfx}/{tf_name}"))

        convs = list(self.timbral) + list(self.temporal)
        for i, c in enumerate(convs):  # conv2d .. conv2d_4
            w, b = conv(i)
            _copy(c.weight, w)
            _copy(c.bias, b)
        for j, c in enumerate(self.mid):  # conv2d_5 .. conv2d_7: [7, in, 1, out] -> [out, in, 7]
            w, b = conv(len(convs) + j)
            _copy(c.weight, w[:, 0].permute(0, 2, 1))
            _copy(c.bias, b)
        bns = [self.bn_input, *self.timbral_bn, *self.temporal_bn, *self.mid_bn, self.pool_bn, self.dense_bn]
        for i, m in enumerate(bns):
            bn(m, i)
        _copy(self.dense.weight, take("dense/kernel").T)
        _copy(self.dense.bias, take("dense/bias"))
        _copy(self.out.weight, take("dense_1/kernel").T)
        _copy(self.out.bias, take("dense_1/bias"))
        unused = sorted(set(tensors) - set(used))
        if unused:
            raise KeyError(f"checkpoint variables not used by the port: {unused}")
        return used


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"shape mismatch loading musicnn weights: expected {tuple(dst.shape)}, got {tuple(src.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def load_musicnn(model: str = "MTT_musicnn") -> tuple[MusicnnNet, list[str]]:
    """The PyTorch musicnn with the package's TF weights (eval mode, CPU) and its tag names."""
    if model not in MUSICNN_MODELS:
        raise ValueError(f"unknown musicnn model '{model}', expected one of {MUSICNN_MODELS}")
    folder = musicnn_dir() / model
    if not (folder / ".index").is_file():
        raise MusicnnMissingError(f"musicnn checkpoint {folder / '.index'} not found; reinstall: `{INSTALL_HINT}`")
    labels = musicnn_labels(model)
    net = MusicnnNet(n_classes=len(labels))
    net.load_tf_weights(read_checkpoint(str(folder) + "/"))
    return net.eval(), labels
