"""Artifact folders: atomic writes, manifests and content hashes.

Every artifact a step writes is a folder holding a ``manifest.json`` plus columnar/array
files. Writers build the folder under a temporary name beside the target and rename it into
place, so a crashed step never leaves a half-written artifact that a later step would trust.

Writing into a folder is never destructive by surprise: a step writes into a new (or empty)
folder, or replaces a folder that holds an artifact of the same kind (its manifest says so);
anything else is refused unless the caller forces it (``--force``), and an output that equals,
contains or sits inside one of the step's inputs is always refused (see ``check_output``).

Example:
    >>> import pandas as pd, tempfile
    >>> out = Path(tempfile.mkdtemp()) / "dataset"
    >>> with artifact_dir(out, kind="dataset") as tmp:
    ...     _ = save_parquet(pd.DataFrame({"item_id": ["a", "b"]}), tmp / "items.parquet")
    ...     _ = write_manifest(tmp, step="ingest", kind="dataset")
    >>> read_manifest(out, kind="dataset")["kind"]
    'dataset'
    >>> sorted(p.name for p in out.iterdir())
    ['items.parquet', 'manifest.json']
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from fusionrec import __version__


SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class StepError(RuntimeError):
    """An expected failure of a step (bad input, a check that did not pass): the CLI prints its
    message as one line and exits 2, no traceback. Steps raise subclasses of it."""


class ArtifactError(StepError):
    """An artifact folder is missing, incomplete or of the wrong kind."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    # the writer's pid in the name lets a later write remove what a killed writer left behind
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix + ".tmp", dir=path.parent)
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
    timestamp: bool = True,
    **extra: Any,
) -> dict:
    """Write ``manifest.json`` into ``folder`` (call it last, after every other file).

    ``inputs`` maps a role name to an input path; each is recorded with its hash so a later
    step (or a cache) can tell exactly what the artifact was made from. ``timestamp=False``
    leaves out the creation time, for artifacts whose bytes must depend on their inputs only.
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
        "content_hash": _hash_tree(folder, exclude=(MANIFEST,)),
    }
    if timestamp:
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
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


def _kinds(kind: str | Iterable[str] | None) -> tuple[str, ...]:
    if kind is None:
        return ()
    return (kind,) if isinstance(kind, str) else tuple(kind)


def _overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` equals ``b``, contains it or sits inside it (symlinks resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(
    target: str | os.PathLike,
    kind: str | Iterable[str] | None,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool = False,
) -> Path:
    """Refuse to write a step's output where it would destroy something; returns ``target`` as a Path.

    Allowed: a missing or empty folder, or a folder holding an artifact of ``kind`` (one kind
    or several accepted ones; its manifest says so), which the step replaces. Anything else (a
    file, a folder of other files, an artifact of another kind) is refused unless ``force``.
    An output that equals, contains or sits inside one of ``inputs`` is refused even with
    ``force``: replacing it would delete what the step reads.

    Call it at the start of a step (before any slow work), so a refusal comes at once;
    ``artifact_dir`` checks again before it replaces anything.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "thesis.txt").write_text("three years of work")
    >>> check_output(root, "evaluation")
    Traceback (most recent call last):
    ...
    fusionrec.artifacts.ArtifactError: ... holds files that are not a evaluation artifact (thesis.txt); refusing to replace it: choose a new folder, or pass --force to replace it
    >>> check_output(root / "raw", "dataset", inputs=[root])
    Traceback (most recent call last):
    ...
    fusionrec.artifacts.ArtifactError: output folder ... sits inside input ...: writing it would destroy what the step reads; choose a folder outside the inputs
    >>> check_output(root / "new", "evaluation").name
    'new'
    """
    target = Path(target)
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if _overlaps(target, src):
            a, b = target.resolve(), src.resolve()
            how = "is" if a == b else ("contains" if a in b.parents else "sits inside")
            raise ArtifactError(f"output folder {target} {how} input {src}: writing it would destroy what the step reads; "
                                "choose a folder outside the inputs")
    if not target.exists() and not target.is_symlink():
        return target
    if not target.is_dir():
        raise ArtifactError(f"{target} exists and is not a folder; refusing to replace it: choose a new folder")
    if force:
        return target
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return target
    kinds = _kinds(kind)
    found = None
    if (target / MANIFEST).is_file():
        try:
            found = read_json(target / MANIFEST).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
    if found is not None and found in kinds:
        return target
    want = " or ".join(kinds) or "fusionrec"
    held = f"a '{found}' artifact" if found is not None else "files that are not a " + want + " artifact"
    shown = ", ".join(entries[:3]) + (f", ... ({len(entries)} entries)" if len(entries) > 3 else "")
    raise ArtifactError(f"{target} holds {held} ({shown}); refusing to replace it: choose a new folder, or pass --force to replace it")


_PID_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]*\.(tmp|old)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted write of ``target`` left beside it (its writer process is gone).

    A SIGKILL (or a power cut) gives a step no chance to clean up; the temporary folders carry
    the writer's pid, so the next write of the same target removes those whose writer is dead.
    """
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        m = _PID_TMP.match(p.name)
        if m and m.group("name") == target.name and int(m.group("pid")) != os.getpid() and not _pid_alive(int(m.group("pid"))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def artifact_dir(
    target: str | os.PathLike,
    kind: str | Iterable[str] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
    force: bool = False,
) -> Iterator[Path]:
    """Build an artifact folder under a temporary name, then rename it to ``target``.

    ``target`` may be missing or empty (KFP hands a step an empty, existing output folder), or
    hold an artifact of ``kind``, which is replaced; anything else needs ``force`` (see
    ``check_output``, checked on entry and again before the swap). On an exception, SIGINT or
    SIGTERM (the CLI turns it into an exit) the temporary folder is removed and ``target`` is left
    as it was; leftovers of a killed writer are removed by the next write of the same target.
    """
    target = Path(target)
    check_output(target, kind, inputs, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        check_output(target, kind, (), force)
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.x.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
