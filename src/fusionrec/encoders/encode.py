"""The encode step: one modality of a dataset artifact -> an embeddings artifact.

Batched inference through a registered encoder, with

- **masking**: items whose dataset ``image_status``/``audio_status`` is not ``ok`` are masked with
  that status (no decode attempted); files the encoder cannot read, empty texts, rows with no
  tabular value are masked with the encoder's reason. Nothing about one bad item stops a run.
- **a content-hash cache**: key = sha256(encoder identity + preprocessing + the item's content
  bytes: the text string, the media file bytes, the tabular row). Vectors (and reasons) live in
  ``<cache_dir>/<modality>-<encoder key>/`` as ``.npy`` chunks (no pickle); a re-run encodes only
  new or changed items, and an interrupted run resumes from its last flushed chunk.
- **sharding**: ``shard i of n`` encodes the items with ``(item_idx - 1) % n == i`` and writes an
  ``embeddings_shard`` artifact; ``merge`` joins the ``n`` shards into the full artifact,
  identical to an unsharded run (encoders compute each item independently of its batch).

Example:
    >>> cfg = EncodeConfig(modality="text")                                   # doctest: +SKIP
    >>> run(Path("artifacts/dataset"), Path("artifacts/embeddings/text"), cfg)  # doctest: +SKIP
    >>> shards = [run(ds, tmp / f"s{i}", EncodeConfig(modality="image", shard=i, num_shards=4)) for i in range(4)]  # doctest: +SKIP
    >>> merge(shards, Path("artifacts/embeddings/image"))                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from fusionrec.artifacts import ArtifactError, artifact_dir, artifact_hash, atomic_write_json, hash_file, load_npy, read_manifest, save_npy, save_parquet, write_manifest
from fusionrec.config import StepConfig
from fusionrec.data.dataset import DatasetArtifact, is_missing
from fusionrec.encoders.image import cache_root
from fusionrec.encoders.registry import MODALITIES, Encoder, FittableEncoder, Modality, build, default_encoder
from fusionrec.progress import get_logger, progress

log = get_logger("fusionrec.encoders.encode")

MEDIA = ("image", "audio")


class EncodeConfig(StepConfig):
    """Settings of the encode step (config file section ``encode``)."""

    modality: Modality = Field(description="which modality to encode")
    encoder: Optional[str] = Field(None, description="registered encoder name (default: the modality's default)")
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the encoder factory, e.g. {model: <folder>}")
    batch_size: int = Field(32, ge=1, description="items per inference batch")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda[:i]")
    shard: int = Field(0, ge=0, description="this shard's index, 0-based")
    num_shards: int = Field(1, ge=1, description="number of shards; >1 writes an embeddings_shard artifact for `merge`")
    cache: bool = Field(True, description="use the content-hash cache")
    cache_dir: Optional[str] = Field(None, description="cache folder (default $FUSIONREC_CACHE/embeddings or ~/.cache/fusionrec/embeddings)")
    text_template: Optional[str] = Field(
        None, description="text built per item with str.format over its columns, e.g. '{title}. {description}' (default: meta text_columns, title + description)"
    )
    max_length: int = Field(256, ge=8, description="text: tokens kept per item (longer texts are truncated)")
    columns: Optional[list[str]] = Field(None, description="tabular: columns to use (default: meta.json tabular_columns)")
    flush_every: int = Field(2048, ge=1, description="items between cache flushes (an interrupted run resumes from there)")

    @model_validator(mode="after")
    def _check_shard(self) -> "EncodeConfig":
        if self.shard >= self.num_shards:
            raise ValueError(f"shard {self.shard} out of range for num_shards={self.num_shards} (shards are 0..{self.num_shards - 1})")
        return self


# ----------------------------------------------------------------------------- inputs
def _sentence(part: str) -> str:
    part = part.strip()
    return part if not part or part[-1] in ".!?:;" else part + "."


def build_texts(items: pd.DataFrame, meta: dict, template: str | None = None) -> list[str]:
    """Per item, the text to encode ('' when none): ``template`` over the item's columns, or the
    meta ``text_columns`` (default title, description) as sentences joined by a space."""
    records = items.to_dict("records")
    if template is None:
        cols = [c for c in (meta.get("text_columns") or ["title", "description"]) if c in items.columns]
        out = []
        for r in records:
            parts = [_sentence(str(r[c])) for c in cols if not is_missing(r[c]) and str(r[c]).strip()]
            out.append(" ".join(p for p in parts if p))
        return out
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise ValueError(f"text_template {template!r} is not a valid format string: {exc}") from None
    unknown = sorted({f.split(".")[0].split("[")[0] for f in fields} - set(items.columns))
    if unknown:
        raise ValueError(f"text_template refers to unknown item column(s) {unknown}; columns are {list(items.columns)}")
    out = []
    for r in records:
        vals = {k: ("" if is_missing(v) else v) for k, v in r.items()}
        if not any(str(vals[f.split(".")[0].split("[")[0]]).strip() for f in fields):
            out.append("")
            continue
        out.append(template.format_map(vals).strip())
    return out


def _tabular_columns(ds, cfg: EncodeConfig) -> list[str]:
    cols = cfg.columns if cfg.columns is not None else list(ds.meta.get("tabular_columns") or [])
    missing = [c for c in cols if c not in ds.items.columns]
    if missing:
        raise ValueError(f"tabular column(s) {missing} not in {ds.path / 'items.parquet'}; columns are {list(ds.items.columns)}")
    return cols


def _tabular_rows(items: pd.DataFrame, cols: list[str]) -> list[dict[str, Any]]:
    return [{c: (None if is_missing(v) else v) for c, v in r.items()} for r in items[cols].to_dict("records")]


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    return v if isinstance(v, (str, int, bool, type(None), list, dict)) else str(v)


def _file_digest(path: Path) -> bytes | None:
    try:
        return bytes.fromhex(hash_file(path))
    except OSError:
        return None


# ----------------------------------------------------------------------------- encoder
def build_encoder(cfg: EncodeConfig) -> Encoder:
    """The registered encoder named by ``cfg`` (device and text max_length passed when it takes them)."""
    name = cfg.encoder or default_encoder(cfg.modality)
    options = {"device": cfg.device, **({"max_length": cfg.max_length} if cfg.modality == "text" else {})}
    try:
        return build(cfg.modality, name, options=options, **cfg.encoder_kwargs)
    except TypeError as exc:
        raise ValueError(f"bad encoder_kwargs for {cfg.modality} encoder '{name}': {exc}") from None


_SHARED: dict[str, Encoder] = {}


def shared_encoder(modality: str, name: str | None = None, **kwargs: Any) -> Encoder:
    """``registry.build`` memoised per process (tests, benchmarks and notebooks load weights once).

    Example:
        >>> enc = shared_encoder("text")           # doctest: +SKIP
        >>> enc is shared_encoder("text")          # doctest: +SKIP
        True
    """
    key = json.dumps([modality, name, kwargs], sort_keys=True, default=str)
    if key not in _SHARED:
        _SHARED[key] = build(modality, name, **kwargs)
    return _SHARED[key]


def encoder_key(modality: str, description: dict) -> str:
    """Identity of an encoder + its preprocessing: the cache namespace."""
    blob = json.dumps({"modality": modality, "describe": description}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- cache
class EmbeddingCache:
    """Content-hash -> (vector, reason) store in one folder per encoder identity.

    Each flush writes ``vectors-<id>.npy`` (float32 [n, d]), ``reasons-<id>.json`` and finally
    ``keys-<id>.npy`` (uint8 [n, 32] sha256 digests; its presence commits the chunk). Writers
    never touch each other's files, so parallel shards can share one cache folder.
    """

    def __init__(self, root: Path, modality: str, key: str, dim: int, description: dict | None = None) -> None:
        self.folder = Path(root) / f"{modality}-{key[:24]}"
        self.dim = dim
        self.index: dict[bytes, tuple[int, int]] = {}
        self.chunks: list[tuple[np.ndarray, list[str | None]]] = []
        self._pending_keys: list[bytes] = []
        self._pending_vecs: list[np.ndarray] = []
        self._pending_reasons: list[str | None] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        if description is not None and not (self.folder / "encoder.json").exists():
            atomic_write_json(self.folder / "encoder.json", {"modality": modality, "key": key, "describe": description})
        self._load()

    def _load(self) -> None:
        for kf in sorted(self.folder.glob("keys-*.npy")):
            cid = kf.name[len("keys-") : -len(".npy")]
            try:
                keys = load_npy(kf)
                vecs = load_npy(self.folder / f"vectors-{cid}.npy", mmap=True)
                reasons = json.loads((self.folder / f"reasons-{cid}.json").read_text())
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable cache chunk %s: %s", kf, exc)
                continue
            if keys.ndim != 2 or keys.shape[1] != 32 or vecs.shape != (len(keys), self.dim) or len(reasons) != len(keys):
                log.warning("skipping inconsistent cache chunk %s", kf)
                continue
            c = len(self.chunks)
            self.chunks.append((vecs, reasons))
            for row, k in enumerate(keys):
                self.index[k.tobytes()] = (c, row)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: bytes) -> tuple[np.ndarray, str | None] | None:
        hit = self.index.get(key)
        if hit is None:
            return None
        vecs, reasons = self.chunks[hit[0]]
        return np.asarray(vecs[hit[1]], dtype=np.float32), reasons[hit[1]]

    def add(self, keys: Sequence[bytes], vecs: np.ndarray, reasons: Sequence[str | None]) -> None:
        self._pending_keys.extend(keys)
        self._pending_vecs.append(np.asarray(vecs, np.float32))
        self._pending_reasons.extend(reasons)

    @property
    def pending(self) -> int:
        return len(self._pending_keys)

    def flush(self) -> None:
        if not self._pending_keys:
            return
        cid = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        vecs = np.concatenate(self._pending_vecs).astype(np.float32)
        keys = np.frombuffer(b"".join(self._pending_keys), dtype=np.uint8).reshape(-1, 32)
        save_npy(self.folder / f"vectors-{cid}.npy", vecs)
        atomic_write_json(self.folder / f"reasons-{cid}.json", list(self._pending_reasons))
        save_npy(self.folder / f"keys-{cid}.npy", keys)  # last: commits the chunk
        c = len(self.chunks)
        self.chunks.append((vecs, list(self._pending_reasons)))
        for row, k in enumerate(self._pending_keys):
            self.index[k] = (c, row)
        self._pending_keys, self._pending_vecs, self._pending_reasons = [], [], []


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


# ----------------------------------------------------------------------------- encoding
def _safe_encode(enc: Encoder, batch: list[Any], dim: int) -> tuple[np.ndarray, list[str | None], int]:
    """``enc.encode_batch`` that never raises for one bad item: a failing batch is retried item by item.

    Returns (vectors, reasons, number of items that failed with an encoder exception).
    """
    try:
        vecs, reasons = enc.encode_batch(batch)
        vecs = np.asarray(vecs, dtype=np.float32)
        if vecs.shape != (len(batch), dim) or len(reasons) != len(batch):
            raise RuntimeError(f"encoder returned {vecs.shape} vectors and {len(reasons)} reasons for {len(batch)} items (dim {dim})")
        reasons = list(reasons)
        bad = ~np.isfinite(vecs).all(1)
        for i in np.flatnonzero(bad):
            if reasons[i] is None:
                reasons[i] = "non-finite embedding"
        vecs[bad] = 0.0
        for i, r in enumerate(reasons):
            if r is not None:
                vecs[i] = 0.0
        return vecs, reasons, 0
    except Exception as exc:
        if len(batch) == 1:
            return np.zeros((1, dim), np.float32), [f"encoder error: {type(exc).__name__}: {str(exc)[:200]}"], 1
        parts = [_safe_encode(enc, [x], dim) for x in batch]
        return np.concatenate([p[0] for p in parts]), [p[1][0] for p in parts], sum(p[2] for p in parts)


def _prepare(ds, cfg: EncodeConfig, enc: Encoder) -> tuple[list[Any], list[str | None], list[bytes | None]]:
    """Per item (in item_idx order): the encoder input, a pre-mask reason, and the content digest."""
    items = ds.items
    n = len(items)
    inputs: list[Any] = [None] * n
    pre: list[str | None] = [None] * n
    content: list[bytes | None] = [None] * n
    if cfg.modality == "text":
        for i, t in enumerate(build_texts(items, ds.meta, cfg.text_template)):
            inputs[i] = t
            content[i] = hashlib.sha256(t.encode("utf-8")).digest()
    elif cfg.modality in MEDIA:
        col, status_col = cfg.modality, f"{cfg.modality}_status"
        paths = items[col] if col in items.columns else pd.Series([None] * n)
        status = items[status_col] if status_col in items.columns else pd.Series([None] * n)
        for i, (p, s) in enumerate(zip(paths, status)):
            if is_missing(p):
                pre[i] = "absent" if is_missing(s) or s == "ok" else str(s)
            elif not is_missing(s) and s != "ok":
                pre[i] = str(s)
            else:
                inputs[i] = ds.path / str(p)
    else:
        cols = _tabular_columns(ds, cfg)
        rows = _tabular_rows(items, cols)
        for i, r in enumerate(rows):
            inputs[i] = r
            content[i] = hashlib.sha256(json.dumps({k: _json_value(v) for k, v in r.items()}, sort_keys=True).encode()).digest()
    return inputs, pre, content


def _encode_items(
    enc: Encoder, cfg: EncodeConfig, positions: list[int], inputs: list[Any], pre: list[str | None], content: list[bytes | None], dim: int
) -> tuple[np.ndarray, list[str | None], dict[str, Any]]:
    """Vectors and reasons for ``positions`` (indices into the item table), through the cache."""
    m = len(positions)
    vecs = np.zeros((m, dim), np.float32)
    reasons: list[str | None] = [None] * m
    description = enc.describe()
    key = encoder_key(cfg.modality, description)
    cache = None
    if cfg.cache:
        cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(), cfg.modality, key, dim, description)
    ekey = bytes.fromhex(key)
    keys: list[bytes | None] = [None] * m
    todo: list[int] = []
    n_cached = n_skipped = 0
    for j, p in enumerate(positions):
        if pre[p] is not None:
            reasons[j] = pre[p]
            n_skipped += 1
            continue
        digest = content[p]
        if digest is None and cfg.modality in MEDIA:
            digest = _file_digest(inputs[p])
            if digest is None:  # vanished or unreadable since ingest
                reasons[j] = "missing"
                n_skipped += 1
                continue
        keys[j] = hashlib.sha256(ekey + digest).digest()
        hit = cache.get(keys[j]) if cache is not None else None
        if hit is not None:
            vecs[j], reasons[j] = hit
            n_cached += 1
        else:
            todo.append(j)
    t0 = time.perf_counter()
    n_errors = 0
    bar = progress(total=len(todo), unit="item", desc=f"encode {cfg.modality}", smoothing=0.1)
    try:
        for s in range(0, len(todo), cfg.batch_size):
            chunk = todo[s : s + cfg.batch_size]
            v, r, e = _safe_encode(enc, [inputs[positions[j]] for j in chunk], dim)
            n_errors += e
            vecs[chunk] = v
            for j, reason in zip(chunk, r):
                reasons[j] = reason
            if cache is not None:
                cache.add([keys[j] for j in chunk], v, r)
                if cache.pending >= cfg.flush_every:
                    cache.flush()
            bar.update(len(chunk))
    finally:
        bar.close()
        if cache is not None:
            cache.flush()
    seconds = time.perf_counter() - t0
    if todo and n_errors == len(todo):
        first = next(r for r in reasons if r and r.startswith("encoder error"))
        raise RuntimeError(f"the {cfg.modality} encoder failed on every item ({len(todo)}); first error: {first}")
    stats = {
        "encoded": len(todo),
        "cached": n_cached,
        "skipped": n_skipped,
        "encoder_errors": n_errors,
        "encode_seconds": round(seconds, 4),
        "items_per_s": round(len(todo) / seconds, 2) if todo and seconds > 0 else None,
        "cache_dir": str(cache.folder) if cache is not None else None,
    }
    return vecs, reasons, stats


def shard_positions(n_items: int, shard: int, num_shards: int) -> list[int]:
    """Positions (item_idx - 1) of the items in ``shard`` of ``num_shards``: (item_idx - 1) % n == shard."""
    return list(range(shard, n_items, num_shards))


def run(dataset: Path | DatasetArtifact, out: Path, cfg: EncodeConfig, encoder: Encoder | None = None) -> Path:
    """Encode ``cfg.modality`` of the dataset artifact ``dataset`` (a path, or an open ``DatasetArtifact``) into ``out``.

    ``encoder`` lets a caller reuse an already loaded encoder (it must be the one ``cfg`` names).
    With ``cfg.num_shards > 1`` the output is an ``embeddings_shard`` artifact for ``merge``.
    """
    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    dataset, out = ds.path, Path(out)
    items = ds.items
    n = len(items)
    if not np.array_equal(items["item_idx"].to_numpy(np.int64), np.arange(1, n + 1)):
        raise ArtifactError(f"{dataset}: items.parquet item_idx is not 1..{n}")
    t_start = time.perf_counter()
    enc = encoder if encoder is not None else build_encoder(cfg)
    if getattr(enc, "modality", cfg.modality) != cfg.modality:
        raise ValueError(f"encoder '{enc.name}' is a {enc.modality} encoder, not {cfg.modality}")
    no_columns = False
    if cfg.modality == "tabular":
        cols = _tabular_columns(ds, cfg)
        if not cols:
            no_columns = True
        elif isinstance(enc, FittableEncoder):
            enc.fit(_tabular_rows(items, cols))  # on ALL items, so every shard agrees
    positions = shard_positions(n, cfg.shard, cfg.num_shards)
    if no_columns:
        dim, vecs, reasons = 1, np.zeros((len(positions), 1), np.float32), ["no tabular columns"] * len(positions)
        stats: dict[str, Any] = {"encoded": 0, "cached": 0, "skipped": len(positions), "encoder_errors": 0, "items_per_s": None}
        description = {"encoder": getattr(enc, "name", None), "dim": 1, "weights": None, "preprocessing": {"note": "no tabular columns in the dataset"}}
    else:
        dim = int(enc.dim)
        description = enc.describe()
        inputs, pre, content = _prepare(ds, cfg, enc)
        vecs, reasons, stats = _encode_items(enc, cfg, positions, inputs, pre, content, dim)
    idx = np.asarray(positions, np.int64) + 1
    mask = np.asarray([r is None for r in reasons], bool)
    ids = items["item_id"].astype(str).to_numpy()
    reasons_df = pd.DataFrame(
        {"item_idx": idx[~mask], "item_id": ids[idx[~mask] - 1], "reason": [r for r in reasons if r is not None]}
    ).astype({"item_idx": "int64", "item_id": "str", "reason": "str"})
    reason_counts = dict(Counter(reasons_df["reason"]).most_common())
    stats["total_seconds"] = round(time.perf_counter() - t_start, 3)
    sharded = cfg.num_shards > 1
    with artifact_dir(out) as tmp:
        if sharded:
            save_npy(tmp / "item_idx.npy", idx)
            save_npy(tmp / "embeddings.npy", vecs)
            save_npy(tmp / "mask.npy", mask)
        else:
            full = np.zeros((n + 1, dim), np.float32)
            full[idx] = vecs
            fmask = np.zeros(n + 1, bool)
            fmask[idx] = mask
            save_npy(tmp / "embeddings.npy", full)
            save_npy(tmp / "mask.npy", fmask)
        save_parquet(reasons_df, tmp / "reasons.parquet")
        write_manifest(
            tmp,
            step="encode",
            params=cfg,
            inputs={"dataset": dataset},
            kind="embeddings_shard" if sharded else "embeddings",
            modality=cfg.modality,
            encoder=description.get("encoder") or getattr(enc, "name", None),
            weights=description.get("weights"),
            dim=dim,
            preprocessing=description.get("preprocessing"),
            encoder_key=encoder_key(cfg.modality, description),
            n_items=n,
            shard={"index": cfg.shard, "count": cfg.num_shards, "items": int(len(idx))},
            counts={"present": int(mask.sum()), "masked": int((~mask).sum()), **{k: v for k, v in stats.items() if k != "cache_dir"}},
            reasons=reason_counts,
            cache_dir=stats.get("cache_dir"),
        )
    log.info(
        "encode %s%s: %d items, dim %d, %d present, %d masked %s, %d encoded, %d cached%s -> %s",
        cfg.modality, f" shard {cfg.shard}/{cfg.num_shards}" if sharded else "", len(idx), dim, int(mask.sum()), int((~mask).sum()),
        reason_counts or "", stats["encoded"], stats["cached"],
        f", {stats['items_per_s']} items/s" if stats.get("items_per_s") else "", out,
    )
    return out


_SAME = ("modality", "encoder", "weights", "dim", "preprocessing", "encoder_key", "n_items")


def merge(shards: Sequence[Path], out: Path) -> Path:
    """Join the ``embeddings_shard`` artifacts of one sharded run into the full embeddings artifact."""
    shards = [Path(s) for s in shards]
    if not shards:
        raise ValueError("merge needs at least one shard artifact")
    manifests = [read_manifest(s, kind="embeddings_shard") for s in shards]
    first = manifests[0]
    for s, m in zip(shards[1:], manifests[1:]):
        for k in _SAME:
            if m.get(k) != first.get(k):
                raise ArtifactError(f"shard {s} differs from {shards[0]} in '{k}': {m.get(k)!r} vs {first.get(k)!r}")
        if m["inputs"]["dataset"]["hash"] != first["inputs"]["dataset"]["hash"]:
            raise ArtifactError(f"shard {s} was encoded from a different dataset than {shards[0]}")
    count = first["shard"]["count"]
    got = sorted(m["shard"]["index"] for m in manifests)
    if any(m["shard"]["count"] != count for m in manifests) or got != list(range(count)):
        missing = sorted(set(range(count)) - set(got))
        dup = sorted(i for i, c in Counter(got).items() if c > 1)
        raise ArtifactError(f"merge needs shards 0..{count - 1} exactly once; missing {missing}, duplicated {dup}")
    n, dim = int(first["n_items"]), int(first["dim"])
    full = np.zeros((n + 1, dim), np.float32)
    fmask = np.zeros(n + 1, bool)
    seen = np.zeros(n + 1, bool)
    reasons = []
    totals: Counter = Counter()
    for s, m in zip(shards, manifests):
        idx = load_npy(s / "item_idx.npy")
        if seen[idx].any():
            raise ArtifactError(f"shard {s} repeats items of another shard")
        seen[idx] = True
        full[idx] = load_npy(s / "embeddings.npy")
        fmask[idx] = load_npy(s / "mask.npy")
        reasons.append(pd.read_parquet(s / "reasons.parquet"))
        for k in ("present", "masked", "encoded", "cached", "skipped", "encoder_errors"):
            totals[k] += int(m.get("counts", {}).get(k) or 0)
    if not seen[1:].all():
        raise ArtifactError(f"shards cover {int(seen[1:].sum())} of {n} items")
    reasons_df = pd.concat(reasons, ignore_index=True).sort_values("item_idx", kind="stable").reset_index(drop=True)
    with artifact_dir(out) as tmp:
        save_npy(tmp / "embeddings.npy", full)
        save_npy(tmp / "mask.npy", fmask)
        save_parquet(reasons_df, tmp / "reasons.parquet")
        write_manifest(
            tmp,
            step="encode-merge",
            params={**first["params"], "shard": 0, "num_shards": 1},
            inputs={f"shard_{m['shard']['index']}": s for s, m in zip(shards, manifests)},
            kind="embeddings",
            **{k: first.get(k) for k in _SAME},
            dataset=first["inputs"]["dataset"],
            merged_from=count,
            counts=dict(totals),
            reasons=dict(Counter(reasons_df["reason"]).most_common()),
        )
    return out


__all__ = ["EncodeConfig", "run", "merge", "build_encoder", "shared_encoder", "build_texts", "EmbeddingCache", "shard_positions", "MODALITIES"]
