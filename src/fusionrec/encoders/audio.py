"""Audio encoders: the musicnn music-tagging CNN (default) and a log-mel statistics fallback.

Front end (both encoders), matching musicnn's own extractor (``musicnn/extractor.py``):
decode with ``soundfile`` (wav/flac/ogg/opus/...; ``torchaudio.load`` needs TorchCodec and is not
used), mix to mono (channel mean, as librosa), resample to 16 kHz (``torchaudio.functional.resample``;
an FFT resampler for sample rates whose ratio to 16 kHz is awkward), power mel spectrogram
(n_fft 512, hop 256, 96 Slaney-normalised Slaney-scale bands, centred frames with reflect padding:
librosa's ``feature.melspectrogram`` defaults), rounded to float16 as musicnn does, then
``log10(1 + 10000 * mel)``. Patches are 187 frames (3 s), non-overlapping from the start of the
clip as in musicnn's extractor (a trailing partial patch is dropped). Choices made here:

- **short clips** (< 3 s, >= ``min_seconds``) are repeat-padded (the log-mel frames tiled), as
  musicnn's training config (``pad_short: repeat-pad``);
- **long clips** contribute at most ``max_patches`` patches (default 10 = 30 s of audio) taken
  evenly spaced over the whole clip; clips longer than ``max_decode_seconds`` are not decoded
  whole: only those 3 s segments are read (seeking in the file);
- the item vector is the **mean over patches** of the 200-d penultimate layer (batch-normalised
  dense layer before the tag layer); tag probabilities are the mean of the per-patch sigmoids
  (musicnn's ``top_tags`` averages its taggram the same way).

Masked with a reason, never a crash: missing file, undecodable/garbage/truncated-beyond-repair
data, zero samples, shorter than ``min_seconds``, NaN/inf samples, and silence (peak amplitude
below ``silence_threshold``: every silent clip would otherwise get one identical, meaningless
vector). Output is deterministic (eval mode, no randomness; float32 on CPU).

Verified (tests/test_audio_encoder.py): the TF checkpoint reader returns all 64 model variables of
MTT_musicnn/MSD_musicnn with the shapes the network expects (CRC32C checked when
``google_crc32c`` is importable) and every one is consumed by the port; no TensorFlow is
available here, so numeric parity with the TF graph is checked indirectly through the tags:
on the royalty-free tracks of the PyPI package ``immich-memories-music`` acoustic tracks get
guitar/acoustic tags and electronic ones electronic/synth/techno tags; synthesized click tracks
get drum/beat tags and sustained sine chords quiet/ambient/slow tags, with clearly separated
embeddings; two crops of one track are closer than crops of different tracks; on the demo
catalog the nearest neighbour of an item's embedding shares its mood (~0.84 1-NN accuracy vs 0.28
chance on 57 items). The tag check does catch layout slips: with the back end's max/mean pooling
concatenated instead of interleaved, every track is tagged "no vocals"/"slow" and the guitar
tracks lose "guitar". Not verified: bit-level parity with TF, and librosa's resampler (soxr/kaiser)
vs torchaudio's sinc resampler (small spectral differences near 8 kHz).

Example:
    >>> enc = build("audio")                                          # doctest: +SKIP
    >>> vecs, reasons = enc.encode_batch([Path("media/a.ogg"), Path("bad.wav")])  # doctest: +SKIP
    >>> vecs.shape, reasons[1]                                              # doctest: +SKIP
    ((2, 200), 'undecodable audio: ...')
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fusionrec.artifacts import hash_file, package_version
from fusionrec.device import pick_device
from fusionrec.encoders.registry import register

SR = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
PATCH_SAMPLES = (PATCH_FRAMES - 1) * HOP  # centred frames: this many samples give exactly 187 frames


class AudioError(Exception):
    """An item's audio cannot be used; the message is the mask reason."""


# --------------------------------------------------------------------------------------------------
# decoding and front end
# --------------------------------------------------------------------------------------------------
def _to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 samples at ``sr`` -> 16 kHz."""
    if sr == SR or x.size == 0:
        return x
    import torch
    import torchaudio.functional as AF

    g = math.gcd(int(sr), SR)
    if sr // g <= 4000:  # torchaudio's polyphase sinc kernel is [SR/g, sr/g]-sized: fine for usual rates
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), int(sr), SR).numpy()
    from scipy.signal import resample  # odd rates (e.g. 44101 Hz): FFT resampling, any ratio

    return resample(x, max(1, round(len(x) * SR / sr))).astype(np.float32)


def _mono(block: np.ndarray) -> np.ndarray:
    return (block.mean(axis=1) if block.ndim == 2 else block).astype(np.float32, copy=False)


def _check(x: np.ndarray, min_seconds: float, silence_threshold: float) -> None:
    if x.size == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.isfinite(x).all():
        raise AudioError("audio contains NaN/inf samples")
    if len(x) < min_seconds * SR:
        raise AudioError(f"audio too short: {len(x) / SR:.2f} s < {min_seconds} s")
    peak = float(np.abs(x).max())
    if peak < silence_threshold:
        raise AudioError(f"silent audio (peak amplitude {peak:.2g} < {silence_threshold:g})")


def decode_segments(path: Path, max_patches: int, max_decode_seconds: float = 120.0,
                    min_seconds: float = 0.5, silence_threshold: float = 1e-4) -> tuple[list[np.ndarray], bool]:
    """Decode ``path`` to mono 16 kHz float32.

    Returns ``([whole clip], False)`` normally, or ``([max_patches evenly spaced 3 s segments], True)``
    when the clip is longer than ``max_decode_seconds`` (only those segments are read).
    Raises :class:`AudioError` with the mask reason.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"missing audio file: {path}")
    if path.stat().st_size == 0:
        raise AudioError("empty audio file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            sr, n = int(f.samplerate), int(f.frames)
            if sr <= 0:
                raise AudioError(f"bad sample rate {sr}")
            long_clip = n > max_decode_seconds * sr and f.seekable()
            if not long_clip:
                x = _mono(f.read(dtype="float32", always_2d=True))
                if x.size and not np.isfinite(x).all():  # check before resampling spreads a NaN
                    raise AudioError("audio contains NaN/inf samples")
                x = _to_16k(x, sr)
                _check(x, min_seconds, silence_threshold)
                return [x], False
            seg = int(math.ceil((PATCH_SAMPLES / SR) * sr)) + 1
            starts = np.linspace(0, n - seg, max_patches).round().astype(np.int64)
            out = []
            for s in starts:
                f.seek(int(s))
                x = _mono(f.read(seg, dtype="float32", always_2d=True))
                if x.size and not np.isfinite(x).all():
                    raise AudioError("audio contains NaN/inf samples")
                out.append(_to_16k(x, sr))
    except AudioError:
        raise
    except Exception as exc:  # libsndfile errors, truncated/garbage data, unknown formats
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = re.sub(r"^Error opening .*?: ", "", msg)  # the path is already in the row's item
        raise AudioError(f"undecodable audio: {msg[:200]}") from None
    segs = [s for s in out if s.size]
    if not segs:
        raise AudioError("empty audio (0 samples)")
    _check(np.concatenate(segs), min_seconds, silence_threshold)
    return [np.pad(s[:PATCH_SAMPLES], (0, max(0, PATCH_SAMPLES - len(s)))) for s in segs], True


@lru_cache(maxsize=1)
def _mel_transform():
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, f_min=0.0, f_max=SR / 2, power=2.0,
        center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")


def log_mel(x: np.ndarray) -> np.ndarray:
    """Mono 16 kHz samples -> musicnn's log-mel [frames, 96] float32 (``log10(1 + 10000 * mel)``)."""
    import torch

    with torch.inference_mode():
        mel = _mel_transform()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))  # [96, T]
        mel = mel.clamp(max=65504.0).to(torch.float16).to(torch.float32)  # musicnn stores mel as float16
        return torch.log10(1.0 + 10000.0 * mel).T.contiguous().numpy()


def patches_from(segments: list[np.ndarray], is_crops: bool, max_patches: int) -> np.ndarray:
    """[n_patches, 187, 96] log-mel patches (see the module docstring for the rules)."""
    if is_crops:
        return np.stack([log_mel(s)[:PATCH_FRAMES] for s in segments])
    m = log_mel(segments[0])
    t = m.shape[0]
    if t < PATCH_FRAMES:  # repeat-pad short clips
        return np.tile(m, (math.ceil(PATCH_FRAMES / t), 1))[None, :PATCH_FRAMES]
    n_grid = t // PATCH_FRAMES
    if n_grid <= max_patches:
        starts = np.arange(n_grid) * PATCH_FRAMES
    else:
        starts = np.linspace(0, t - PATCH_FRAMES, max_patches).round().astype(np.int64)
    return np.stack([m[s:s + PATCH_FRAMES] for s in starts])


def load_patches(path: Path, max_patches: int = 10, max_decode_seconds: float = 120.0,
                 min_seconds: float = 0.5, silence_threshold: float = 1e-4) -> np.ndarray:
    """Decode ``path`` and cut it into log-mel patches; raises :class:`AudioError` with the mask reason."""
    segs, crops = decode_segments(path, max_patches, max_decode_seconds, min_seconds, silence_threshold)
    return patches_from(segs, crops, max_patches)


def waveform_patches(waveform: np.ndarray, sample_rate: int = SR, max_patches: int = 10) -> np.ndarray:
    """Log-mel patches of an in-memory waveform ([samples] or [samples, channels])."""
    x = _to_16k(_mono(np.asarray(waveform, dtype=np.float32)), int(sample_rate))
    _check(x, min_seconds=0.05, silence_threshold=0.0)
    return patches_from([x], False, max_patches)


class _AudioBase:
    modality = "audio"
    name = "audio"
    dim = 0

    def __init__(self, max_patches: int = 10, max_decode_seconds: float = 120.0, min_seconds: float = 0.5,
                 silence_threshold: float = 1e-4):
        if max_patches < 1:
            raise ValueError("max_patches must be >= 1")
        self.max_patches = int(max_patches)
        self.max_decode_seconds = float(max_decode_seconds)
        self.min_seconds = float(min_seconds)
        self.silence_threshold = float(silence_threshold)

    def _preprocessing(self) -> dict[str, Any]:
        return {"decoder": "soundfile", "mono": "channel mean", "sample_rate": SR, "resampler": "torchaudio.functional.resample",
                "n_fft": N_FFT, "hop_length": HOP, "n_mels": N_MELS, "mel": "slaney scale+norm, power 2, centre, reflect pad",
                "log": "log10(1 + 10000 * float16(mel))", "patch_frames": PATCH_FRAMES, "patch_hop_frames": PATCH_FRAMES,
                "short_clips": "repeat-pad", "max_patches": self.max_patches,
                "long_clips": "max_patches evenly spaced 3 s patches", "max_decode_seconds": self.max_decode_seconds,
                "min_seconds": self.min_seconds, "silence_threshold": self.silence_threshold, "pooling": "mean over patches"}

    def _patches(self, paths: Sequence[Path]) -> tuple[list[np.ndarray | None], list[str | None]]:
        pats: list[np.ndarray | None] = []
        reasons: list[str | None] = []
        for p in paths:
            try:
                pats.append(load_patches(Path(p), self.max_patches, self.max_decode_seconds, self.min_seconds,
                                         self.silence_threshold))
                reasons.append(None)
            except AudioError as exc:
                pats.append(None)
                reasons.append(str(exc))
        return pats, reasons


# --------------------------------------------------------------------------------------------------
# musicnn
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
@lru_cache(maxsize=4)
def _cached_musicnn(model: str):
    from fusionrec.encoders.musicnn_port import load_musicnn  # torch: loaded when a musicnn encoder is built

    return load_musicnn(model)


@register("audio", "musicnn", default=True)
class MusicnnEncoder(_AudioBase):
    """musicnn (MagnaTagATune or Million Song Dataset tagger) ported to PyTorch: 200-d embeddings + tags.

    Example:
        >>> enc = MusicnnEncoder(model="MTT_musicnn")                      # doctest: +SKIP
        >>> list(enc.tags(waveform, sample_rate=44100))[:3]                # doctest: +SKIP
        ['guitar', 'classical', 'slow']
    """

    name = "musicnn"
    dim = 200

    def __init__(self, model: str = "MTT_musicnn", device: str | None = "auto", batch_patches: int = 32, **kw: Any):
        super().__init__(**kw)
        import copy

        from fusionrec.encoders.musicnn_port import MUSICNN_MODELS, musicnn_dir  # torch: only for this encoder

        if model not in MUSICNN_MODELS:
            raise ValueError(f"unknown musicnn model '{model}', expected one of {', '.join(MUSICNN_MODELS)}")
        musicnn_dir()  # clear error when the package is missing
        self.model = model
        self.device = pick_device(device)
        self.batch_patches = max(1, int(batch_patches))
        net, labels = _cached_musicnn(model)
        self.net = net if self.device == "cpu" else copy.deepcopy(net).to(self.device)
        self.labels: list[str] = list(labels)

    def describe(self) -> dict[str, Any]:
        from fusionrec.encoders.musicnn_port import musicnn_dir  # torch: only for this encoder

        return {"modality": self.modality, "encoder": self.name, "dim": self.dim,
                "weights": {"package": "musicnn", "version": package_version("musicnn"), "checkpoint": self.model,
                            "sha256": hash_file(musicnn_dir() / self.model / ".data-00000-of-00001"), "licence": "ISC",
                            "format": "TensorFlow V2 bundle, read without TensorFlow"},
                "output": "penultimate layer (batch-normalised dense 200), mean over 3 s patches",
                "labels": self.labels, "preprocessing": self._preprocessing()}

    def _run(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, 187, 96] patches -> (tag probabilities [n, classes], penultimate [n, 200])."""
        import torch

        probs, embs = [], []
        with torch.inference_mode():
            for i in range(0, len(patches), self.batch_patches):
                x = torch.from_numpy(patches[i:i + self.batch_patches]).to(self.device)
                logits, pen = self.net(x)
                probs.append(torch.sigmoid(logits).float().cpu().numpy())
                embs.append(pen.float().cpu().numpy())
        if not probs:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.dim), np.float32)
        return np.concatenate(probs), np.concatenate(embs)

    def _pooled(self, pats: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
        good = [p for p in pats if p is not None]
        probs, embs = self._run(np.concatenate(good) if good else np.zeros((0, PATCH_FRAMES, N_MELS), np.float32))
        out_e = np.zeros((len(pats), self.dim), np.float32)
        out_p = np.zeros((len(pats), len(self.labels)), np.float32)
        k = 0
        for i, p in enumerate(pats):
            if p is not None:
                out_e[i] = embs[k:k + len(p)].mean(0)
                out_p[i] = probs[k:k + len(p)].mean(0)
                k += len(p)
        return out_e, out_p

    def encode_batch(self, batch: Sequence[Path]) -> tuple[np.ndarray, list[str | None]]:
        """Paths -> ([n, 200] float32 embeddings, mask reasons); patches of all items are batched together."""
        pats, reasons = self._patches(batch)
        emb, _ = self._pooled(pats)
        return emb, reasons

    def tag_files(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[str | None]]:
        """Paths -> ([n, classes] mean tag probabilities, mask reasons)."""
        pats, reasons = self._patches(paths)
        return self._pooled(pats)[1], reasons

    def embed(self, waveform: np.ndarray, sample_rate: int = SR) -> np.ndarray:
        """One waveform -> its 200-d embedding (mean of the penultimate layer over 3 s patches)."""
        return self._pooled([waveform_patches(waveform, sample_rate, self.max_patches)])[0][0]

    def tags(self, waveform: np.ndarray, sample_rate: int = SR) -> dict[str, float]:
        """One waveform -> ``{tag: probability}``, most likely first."""
        p = self._pooled([waveform_patches(waveform, sample_rate, self.max_patches)])[1][0]
        return {self.labels[i]: float(p[i]) for i in np.argsort(-p, kind="stable")}


# --------------------------------------------------------------------------------------------------
# log-mel statistics (no weights)
# --------------------------------------------------------------------------------------------------
@register("audio", "logmel-stats")
class LogMelStatsEncoder(_AudioBase):
    """No-weights fallback: per-band mean and std of the log-mel and of its time delta (4 x 96 = 384-d).

    Uses the same decoding, front end and patch selection as ``musicnn`` (statistics over the
    frames of all chosen patches).
    """

    name = "logmel-stats"
    dim = 4 * N_MELS

    def __init__(self, device: str | None = "auto", **kw: Any):
        super().__init__(**kw)  # ``device`` accepted for a uniform signature; statistics run on CPU

    def describe(self) -> dict[str, Any]:
        return {"modality": self.modality, "encoder": self.name, "dim": self.dim, "weights": None,
                "output": "per-band mean, std of log-mel and of its delta (torchaudio compute_deltas, win 5)",
                "preprocessing": self._preprocessing()}

    @staticmethod
    def features(patches: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio.functional as AF

        m = torch.from_numpy(patches).transpose(1, 2)  # [P, 96, T]
        d = AF.compute_deltas(m, win_length=5)
        m, d = m.transpose(0, 1).reshape(N_MELS, -1), d.transpose(0, 1).reshape(N_MELS, -1)
        return torch.cat([m.mean(1), m.std(1, unbiased=False), d.mean(1), d.std(1, unbiased=False)]).numpy()

    def encode_batch(self, batch: Sequence[Path]) -> tuple[np.ndarray, list[str | None]]:
        pats, reasons = self._patches(batch)
        out = np.zeros((len(pats), self.dim), np.float32)
        for i, p in enumerate(pats):
            if p is not None:
                out[i] = self.features(p)
        return out, reasons
