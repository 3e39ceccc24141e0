"""Artifact folders: atomic writes, manifests and content hashes.

Every artifact a step writes is a folder holding a ``manifest.json`` plus columnar/array
files. Writers build the folder under a temporary name beside the target and rename it into
place, so a crashed step never leaves a half-written artifact that a later step would trust.

Example:
    >>> with artifact_dir(out) as tmp:                       # doctest: +SKIP
    ...     save_parquet(df, tmp / "items.parquet")
    ...     write_manifest(tmp, step="ingest", params=cfg.model_dump(), inputs={"source": src})
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from fusionrec import __version__


SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """An artifact folder is missing, incomplete or of the wrong kind."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes 0600 files; artifacts are read by other users (KFP steps, Triton containers).
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def save_parquet(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame to parquet atomically (index dropped)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (recorded in manifests), None when it is not installed."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_hash(path: str | os.PathLike) -> str:
    """A stable hash naming an input: an artifact's manifest content hash, or a file/folder hash.

    For an artifact folder it is the ``content_hash`` recorded in its manifest (cheap, and the
    same wherever the folder is copied); for any other folder, a hash over its files' relative
    paths and contents; for a file, its sha256.
    """
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    manifest = path / MANIFEST
    if manifest.exists():
        m = read_json(manifest)
        if m.get("content_hash"):
            return str(m["content_hash"])
    return _hash_tree(path)


def _hash_tree(root: Path, exclude: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel in exclude:
            continue
        h.update(rel.encode())
        h.update(b"\0")
        h.update(hash_file(p).encode())
    return h.hexdigest()


def write_manifest(
    folder: str | os.PathLike,
    step: str,
    params: Mapping[str, Any] | Any | None = None,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    kind: str | None = None,
    **extra: Any,
) -> dict:
    """Write ``manifest.json`` into ``folder`` (call it last, after every other file).

    ``inputs`` maps a role name to an input path; each is recorded with its hash so a later
    step (or a cache) can tell exactly what the artifact was made from.
    """
    folder = Path(folder)
    if params is not None and hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind or step,
        "step": step,
        "params": dict(params or {}),
        "inputs": {k: {"path": str(v), "hash": artifact_hash(v)} for k, v in (inputs or {}).items()},
        "library_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "content_hash": _hash_tree(folder, exclude=(MANIFEST,)),
    }
    manifest.update(extra)
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike, kind: str | None = None) -> dict:
    """Read an artifact's manifest; with ``kind``, check it is that kind of artifact."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise ArtifactError(f"{folder} is not a fusionrec artifact (no {MANIFEST}); was the step that writes it run?")
    manifest = read_json(path)
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{folder} is a '{manifest.get('kind')}' artifact, expected '{kind}'")
    return manifest


@contextlib.contextmanager
def artifact_dir(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Build an artifact folder under a temporary name, then rename it to ``target``.

    On an exception the temporary folder is removed and ``target`` is left as it was.
    KFP hands a step an (empty, existing) output folder: that is fine, it is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        if target.exists():
            if not overwrite and any(target.iterdir()):
                raise ArtifactError(f"{target} exists and is not empty")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
