"""The model repository artifact (``fusionrec export``): its serving contract, its files, and its reader.

As ``DatasetArtifact`` owns the dataset, this module owns the Triton model repository: every
other module (the exporter, the Triton server, the gRPC client, the offline A/B) takes the
tensor names, the history length ``max_len``, ``K``, the item table and the popularity list
from here, and never re-reads them its own way.

Layout (one model folder per served model; ``manifest.json`` at the repository root)::

    <repo>/<name>/config.pbtxt          Triton model configuration (onnxruntime backend)
    <repo>/<name>/1/model.onnx          HISTORY int64 [batch, max_len] (+ optional EXCLUDE int64 [batch, E], -1 padded,
                                        and optional EVENTS int64 [batch, max_len], behaviour kind ids)
                                        -> ITEM_IDX int64 [batch, K], SCORE float32 [batch, K]
    <repo>/<name>/item_ids.json         external item id of every item_idx (0 = padding "")
    <repo>/<name>/popular.json          the cold-user fallback {"item_idx", "item_id", "count"}
    <repo>/<name>/export_report.json    exporter, parity, and the record of n_items / max_len / k
    <repo>/<name>_query/...             optional companion: text query -> top-K items (see below)
    <repo>/<name>_explain/...           optional companion: history + recommended items -> explanations

The graph's inputs and outputs are listed once, in :data:`INPUTS` and :data:`OUTPUTS`:
``config.pbtxt``, the Triton binding (``fusionrec.serving.server``), the config validation
(``fusionrec.serving.config``) and the exporter's check of the ONNX graph all iterate them, so a
new optional input is declared here once (plus how the graph computes it, in
``fusionrec.export.graph``, and how a caller fills it, in :func:`feeds`).

Companion models (``kind`` in their ``export_report.json``) are served beside the ranker by the
same server and dynamic batcher; their tensors are recorded resolved in the report and read back by
:func:`graph_io`, which is what the server binds and the config validation checks, for every kind:

- ``query``:   ``INPUT_IDS``, ``ATTENTION_MASK`` int64 [batch, max_tokens] (tokenized by the client
  with ``<name>_query/tokenizer``) -> ``ITEM_IDX`` int64 / ``SCORE`` float32 [batch, K];
- ``explain``: ``HISTORY`` int64 [batch, max_len], ``ITEMS`` int64 [batch, E] (the items to explain)
  -> ``SCORE`` [batch, E], ``DROP`` [batch, max_len, E] (leave-one-out score drops), ``WEIGHT`` and
  ``CONTRIB`` [batch, E, C] (fusion weights, per-channel score split; channel names in the report).

A row a graph cannot take (an id outside its range) comes back with ``-1`` in int64 outputs and
NaN in float ones, without failing the other rows of its batch.

Nothing here imports Triton (``config.pbtxt`` is written as text; ``fusionrec.serving.config``
validates it with Triton's schema).

Example:
    >>> repo = ModelRepository("artifacts/repo")                     # doctest: +SKIP
    >>> repo.name, repo.max_len, repo.k, repo.n_items                 # doctest: +SKIP
    ('fusionrec', 50, 100, 2000)
    >>> idx, score = OnnxRanker(repo).topk(np.array([[0, 0, 3, 7]]), k=10)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from fusionrec.artifacts import ArtifactError, atomic_write_json, atomic_write_text, read_json
from fusionrec.ranking import pad_events, pad_histories

# -- the serving contract ----------------------------------------------------------------------
HISTORY = "HISTORY"
"""Input: item_idx history, int64 [batch, max_len], left-padded with 0, most recent last."""
ITEM_IDX = "ITEM_IDX"
"""Output: the top-K item_idx, int64 [batch, K], best first."""
SCORE = "SCORE"
"""Output: their scores, float32 [batch, K]."""
EXCLUDE = "EXCLUDE"
"""Optional input: item_idx the caller says the user already consumed, int64 [batch, E], padded with -1.

The sequence model reads only the last ``max_len`` items (HISTORY, excluded anyway); a user's whole
consumed set can be longer, and none of it may come back. E is free (``dims: [ -1 ]``); callers pad
it to a power of two (:func:`exclude_width`) so Triton's dynamic batcher can batch requests together.
Left out, it is one column of -1 (nothing more excluded)."""
EXCLUDE_FILL = -1
EVENTS = "EVENTS"
"""Optional input: the behaviour kind of each HISTORY position, int64 [batch, max_len] (same padding).

Kind id = 1-based index into the repository's ``event_kinds`` (``export_report.json``; the clients map
kind names with it); 0 = padding or unknown. A model trained without kinds ignores it; a negative id
makes the row invalid, an id past the vocabulary reads as unknown. Left out, every kind is unknown."""
INVALID_IDX = -1
"""ITEM_IDX of a row whose history holds an id outside [0, n_items] (its SCORE is NaN)."""

MODEL_FILE = "model.onnx"


#: numpy dtype name -> config.pbtxt data_type, and -> tritonclient InferInput datatype
TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32"}
TRITON_DATATYPES = {"int64": "INT64", "float32": "FP32"}


class _TritonTyped:
    """The Triton type names of a tensor's numpy ``dtype`` (shared by ``TensorSpec`` and ``GraphTensor``)."""

    dtype: str

    @property
    def triton_type(self) -> str:
        """The config.pbtxt ``data_type``."""
        return TRITON_TYPES[self.dtype]

    @property
    def triton_datatype(self) -> str:
        """The tritonclient ``InferInput`` datatype string."""
        return TRITON_DATATYPES[self.dtype]


@dataclass(frozen=True)
class TensorSpec(_TritonTyped):
    """One graph input or output: name, element type, and which repository size is its length."""

    name: str
    dtype: str
    """numpy dtype name: ``int64`` or ``float32``."""
    length: str
    """``max_len`` or ``k``: the per-row length (after the batch axis) is that repository field; ``free``: any (-1)."""
    optional: bool = False
    """An input a request may leave out (``optional: true`` in config.pbtxt); the server then feeds ``fill``."""
    fill: int = 0
    """The value of an optional input left out (e.g. -1: an empty, -1-padded id list)."""

    def dims(self, max_len: int, k: int) -> int:
        return {"max_len": max_len, "k": k, "free": -1}[self.length]


INPUTS: tuple[TensorSpec, ...] = (TensorSpec(HISTORY, "int64", "max_len"),
                                  TensorSpec(EXCLUDE, "int64", "free", optional=True, fill=EXCLUDE_FILL),
                                  TensorSpec(EVENTS, "int64", "max_len", optional=True, fill=0))
OUTPUTS: tuple[TensorSpec, ...] = (TensorSpec(ITEM_IDX, "int64", "k"), TensorSpec(SCORE, "float32", "k"))
OUTPUT_NAMES = [o.name for o in OUTPUTS]


def exclude_width(n: int) -> int:
    """The EXCLUDE width for ``n`` ids: the next power of two >= max(n, 8), so requests share a few shapes."""
    return max(8, 1 << max(0, int(n) - 1).bit_length())


def pad_exclude(exclude: np.ndarray | None, batch: int) -> np.ndarray:
    """EXCLUDE as int64 [batch, exclude_width(E)], -1 padded (``None``: nothing excluded)."""
    if exclude is None:
        return np.full((batch, exclude_width(0)), EXCLUDE_FILL, dtype=np.int64)
    e = np.asarray(exclude, dtype=np.int64)
    if e.ndim != 2 or e.shape[0] != batch:
        raise ValueError(f"exclude must be int64 [batch={batch}, E] padded with -1, got shape {e.shape}")
    used = int((e >= 0).sum(1).max()) if e.size else 0
    out = np.full((batch, exclude_width(used)), EXCLUDE_FILL, dtype=np.int64)
    for r in range(batch):  # compact each row's ids to the left (callers may pad anywhere)
        ids = e[r][e[r] >= 0]
        out[r, : len(ids)] = ids
    return out


def feeds(histories: np.ndarray, max_len: int, exclude: np.ndarray | None = None,
          events: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The graph's input arrays for a batch of item_idx histories (re-padded to ``max_len``), exclusion lists
    and behaviour kind ids (parallel to the histories), in ``INPUTS`` order.

    Every caller of the graph (``OnnxRanker``, the gRPC client, the exporter's parity check) builds
    its request here, so an additional graph input is filled in one place (onnxruntime needs every
    input; over gRPC an optional one may be left out and the server feeds its ``fill``).
    """
    h = pad_histories(histories, max_len)
    return {HISTORY: h, EXCLUDE: pad_exclude(exclude, len(h)), EVENTS: pad_events(histories, events, max_len)}


def kind_ids(kinds: Sequence[str | None], vocabulary: Sequence[str]) -> np.ndarray:
    """Behaviour kind names -> EVENTS ids in ``vocabulary`` (1-based; None or a kind not in it -> 0, unknown).

    Example:
        >>> kind_ids(["view", "purchase", None, "share"], ["view", "play", "purchase"]).tolist()
        [1, 3, 0, 0]
    """
    code = {k: i + 1 for i, k in enumerate(vocabulary)}
    return np.array([code.get(k, 0) if k is not None else 0 for k in kinds], dtype=np.int64)


# -- companion models -------------------------------------------------------------------------
QUERY_SUFFIX = "_query"
EXPLAIN_SUFFIX = "_explain"
INPUT_IDS = "INPUT_IDS"
ATTENTION_MASK = "ATTENTION_MASK"
ITEMS = "ITEMS"
DROP = "DROP"
WEIGHT = "WEIGHT"
CONTRIB = "CONTRIB"
RANKER = "ranker"
KINDS = (RANKER, "query", "explain")


@dataclass(frozen=True)
class GraphTensor(_TritonTyped):
    """A graph input/output with its per-row shape resolved (the batch axis excluded)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    """An input a request may leave out; the server then feeds ``fill`` (see ``TensorSpec``)."""
    fill: int = 0

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.dims)]


def graph_io(model_dir: str | os.PathLike) -> tuple[str, list[GraphTensor], list[GraphTensor]]:
    """``(kind, inputs, outputs)`` of a model folder, from its ``export_report.json``."""
    mdir = Path(model_dir)
    path = mdir / "export_report.json"
    if not path.exists():
        raise ArtifactError(f"{path} not found: is {mdir.parent} a model repository written by 'fusionrec export'?")
    report = read_json(path)
    kind = report.get("kind", RANKER)
    if kind == RANKER:
        max_len, k = int(report["max_len"]), int(report["k"])
        return kind, [GraphTensor(t.name, t.dtype, (t.dims(max_len, k),), t.optional, t.fill) for t in INPUTS], \
            [GraphTensor(t.name, t.dtype, (t.dims(max_len, k),)) for t in OUTPUTS]
    if kind not in KINDS or "tensors" not in report:
        raise ArtifactError(f"{path}: unknown model kind '{kind}' (expected one of {KINDS}) or no tensors recorded")
    def tensors(rows: list) -> list[GraphTensor]:
        return [GraphTensor(str(n), str(d), tuple(int(x) for x in dims)) for n, d, dims in rows]
    return kind, tensors(report["tensors"]["inputs"]), tensors(report["tensors"]["outputs"])


def companion_dir(repo: str | os.PathLike, name: str, suffix: str) -> Path | None:
    """``<repo>/<name><suffix>`` when the repository holds that companion model (``repo`` may be the ranker's folder)."""
    repo = Path(repo)
    base = repo.parent if (repo / "config.pbtxt").exists() else repo
    mdir = base / f"{name}{suffix}"
    return mdir if (mdir / "config.pbtxt").exists() else None


def companion_config_pbtxt(name: str, inputs: Sequence[GraphTensor], outputs: Sequence[GraphTensor], cfg: "TritonSettings") -> str:
    """``config.pbtxt`` of a companion model: its tensors, the ranker's batching and instance settings."""
    pref = sorted({b for b in cfg.preferred_batch_size if 0 < b <= cfg.max_batch_size})

    def rows(ts: Sequence[GraphTensor]) -> list[str]:
        out = [f'  {{ name: "{t.name}", data_type: {t.triton_type}, dims: [ {", ".join(str(d) for d in t.dims)} ] }}' for t in ts]
        return [r + ("," if i < len(out) - 1 else "") for i, r in enumerate(out)]

    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {cfg.max_batch_size}",
             "input [", *rows(inputs), "]", "output [", *rows(outputs), "]",
             "dynamic_batching {", f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}"]
    if pref:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in pref)} ]")
    lines += ["}", f"instance_group [ {{ count: {cfg.instance_count}, kind: {cfg.instance_kind} }} ]"]
    return "\n".join(lines) + "\n"


# -- config.pbtxt ------------------------------------------------------------------------------
class TritonSettings(Protocol):
    """The Triton settings ``config.pbtxt`` is written from (``fusionrec.export.ExportConfig`` has them)."""

    name: str
    max_batch_size: int
    max_queue_delay_microseconds: int
    preferred_batch_size: list[int]
    instance_kind: str
    instance_count: int
    accelerator: str
    tensorrt_fp16: bool


def config_pbtxt(cfg: TritonSettings, max_len: int, k: int) -> str:
    """The Triton ``config.pbtxt`` (onnxruntime backend) for the exported graph, as text."""
    pref = sorted({b for b in cfg.preferred_batch_size if 0 < b <= cfg.max_batch_size})

    def tensors(specs: Sequence[TensorSpec]) -> list[str]:
        rows = [f'  {{ name: "{s.name}", data_type: {s.triton_type}, dims: [ {s.dims(max_len, k)} ]'
                + (" optional: true" if s.optional else "") + " }" for s in specs]
        return [r + ("," if i < len(rows) - 1 else "") for i, r in enumerate(rows)]

    lines = [
        f'name: "{cfg.name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {cfg.max_batch_size}",
        "input [", *tensors(INPUTS), "]",
        "output [", *tensors(OUTPUTS), "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_microseconds}",
    ]
    if pref:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in pref)} ]")
    lines += ["}", f"instance_group [ {{ count: {cfg.instance_count}, kind: {cfg.instance_kind} }} ]"]
    if cfg.accelerator == "tensorrt" and cfg.instance_kind == "KIND_GPU":
        params = ['precision_mode', "FP16" if cfg.tensorrt_fp16 else "FP32"]
        lines += [
            "optimization { execution_accelerators {",
            "  gpu_execution_accelerator [ {",
            '    name: "tensorrt"',
            f'    parameters {{ key: "{params[0]}" value: "{params[1]}" }}',
            "  } ]",
            "} }",
        ]
    # Batch dimension: with max_batch_size > 0 Triton prepends the -1 batch axis to every dims.
    return "\n".join(lines) + "\n"


# -- writing -----------------------------------------------------------------------------------
def model_folder(repo: Path, name: str, version: int = 1) -> tuple[Path, Path]:
    """``(<repo>/<name>, <repo>/<name>/<version>/model.onnx)``, the version folder created."""
    mdir = Path(repo) / name
    (mdir / str(version)).mkdir(parents=True, exist_ok=True)
    return mdir, mdir / str(version) / MODEL_FILE


def write_model_files(mdir: Path, cfg: TritonSettings, max_len: int, k: int, item_ids: Sequence[str], popular: dict,
                      report: dict) -> None:
    """Write everything of a model folder but the graph (``config.pbtxt``, item ids, popular list, report)."""
    atomic_write_text(mdir / "config.pbtxt", config_pbtxt(cfg, max_len, k))
    atomic_write_json(mdir / "item_ids.json", list(item_ids))
    atomic_write_json(mdir / "popular.json", popular)
    atomic_write_json(mdir / "export_report.json", report)


def report_shapes(n_items: int, max_len: int, k: int, event_kinds: Sequence[str] = ()) -> dict[str, Any]:
    """The record of the graph's sizes kept in ``export_report.json`` (what :class:`ModelRepository` reads back),
    with the behaviour kinds the graph reads (``event_kinds``: EVENTS id i is ``event_kinds[i - 1]``)."""
    return {"n_items": n_items, "max_len": max_len, "k": k, "event_kinds": list(event_kinds),
            "inputs": {s.name: ["batch", s.dims(max_len, k)] for s in INPUTS} | {"dtype": "int64"},
            "outputs": {s.name: ["batch", s.dims(max_len, k)] for s in OUTPUTS}}


# -- reading -----------------------------------------------------------------------------------
def read_item_ids(path: str | os.PathLike) -> list[str]:
    """Read ``item_ids.json`` (a list indexed by item_idx, or a {item_idx: item_id} mapping)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        if "item_ids" in data:
            data = data["item_ids"]
        else:
            n = max(int(k) for k in data) + 1 if data else 1
            out = [""] * n
            for k, v in data.items():
                out[int(k)] = str(v)
            return out
    if not isinstance(data, list):
        raise ArtifactError(f"{path}: expected a JSON list of item ids indexed by item_idx")
    return ["" if v is None else str(v) for v in data]


def find_model_dir(repo: str | os.PathLike, name: str | None = None) -> Path:
    """The model folder of a repository (``repo`` may be the model folder itself).

    ``name`` picks that model when the repository holds it (a served name such as ``control``
    may differ from the folder name); otherwise the manifest's first model is taken.
    """
    repo = Path(repo)
    if name is not None and (repo / name / "config.pbtxt").exists():
        return repo / name
    if (repo / "config.pbtxt").exists():
        return repo
    manifest = read_json(repo / "manifest.json") if (repo / "manifest.json").exists() else {}
    names = manifest.get("models") or sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    if not names:
        raise FileNotFoundError(f"{repo} holds no model (no <name>/config.pbtxt): is it a model repository from `fusionrec export`?")
    mdir = repo / names[0]
    if not (mdir / "config.pbtxt").exists():
        raise FileNotFoundError(f"{mdir / 'config.pbtxt'} not found in model repository {repo}")
    return mdir


def is_model_repository(path: str | os.PathLike) -> bool:
    """``path`` holds an exported graph: ``<name>/1/model.onnx``, or it is such a model folder."""
    path = Path(path)
    return any(path.glob(f"*/1/{MODEL_FILE}")) or (path / "1" / MODEL_FILE).exists()


def graph_path(model_dir: str | os.PathLike) -> Path:
    """``<model folder>/<latest version>/model.onnx`` (any kind of model)."""
    mdir = Path(model_dir)
    versions = sorted((v for v in mdir.iterdir() if v.is_dir() and v.name.isdigit()), key=lambda v: int(v.name))
    path = (versions[-1] if versions else mdir / "1") / MODEL_FILE
    if not path.exists():
        raise ArtifactError(f"{path} not found: is {mdir.parent} a model repository written by 'fusionrec export'?")
    return path


def model_dirs(repo: str | os.PathLike) -> list[Path]:
    """Every model folder of a repository (or ``[repo]`` when it is a model folder)."""
    repo = Path(repo)
    if (repo / "config.pbtxt").exists():
        return [repo]
    dirs = [q.parent for q in sorted(repo.glob("*/config.pbtxt"))]
    if not dirs:
        find_model_dir(repo)  # raises the clear "not a model repository" error
    return dirs


class ModelRepository:
    """One exported model: its folder, sizes, item table and popularity list, and its onnxruntime session.

    ``max_len``, ``k`` and ``n_items`` are read from ``export_report.json``, where the exporter
    recorded them with the graph; every reader of the repository takes them from here.

    Example:
        >>> repo = ModelRepository("artifacts/repo")             # doctest: +SKIP
        >>> sess = repo.session()                                 # doctest: +SKIP
    """

    def __init__(self, repo: str | os.PathLike, name: str | None = None):
        self.model_dir = find_model_dir(repo, name)
        self.name = self.model_dir.name
        report_path = self.model_dir / "export_report.json"
        if not report_path.exists():
            raise ArtifactError(f"{report_path} not found: is {repo} a model repository written by 'fusionrec export'?")
        self.report: dict = read_json(report_path)
        missing = [f for f in ("max_len", "k", "n_items") if not isinstance(self.report.get(f), int)]
        if missing:
            raise ArtifactError(f"{report_path} does not record {', '.join(missing)}: re-export the model with 'fusionrec export'")
        self.max_len: int = int(self.report["max_len"])
        self.k: int = int(self.report["k"])
        self.n_items: int = int(self.report["n_items"])
        self.event_kinds: list[str] = [str(k) for k in self.report.get("event_kinds") or []]
        """The behaviour kinds the graph reads (EVENTS ids are 1-based into it); [] for a model that reads none."""

    @property
    def onnx_path(self) -> Path:
        """``<name>/<latest version>/model.onnx``."""
        return graph_path(self.model_dir)

    @property
    def item_ids(self) -> list[str] | None:
        """External id of every item_idx (``item_ids.json``; None when the repository has none)."""
        for path in (self.model_dir / "item_ids.json", self.model_dir.parent / "item_ids.json"):
            if path.exists():
                return read_item_ids(path)
        return None

    @property
    def popular(self) -> dict | None:
        """The popularity fallback ``{"item_idx", "item_id", "count"}`` (``popular.json``), if any."""
        path = self.model_dir / "popular.json"
        return read_json(path) if path.exists() else None

    def session(self, providers: list[str] | None = None, threads: int | None = None):
        """An onnxruntime session over the graph (see :func:`ort_session`)."""
        return ort_session(self.onnx_path, providers=providers, threads=threads)


def _cuda_usable() -> bool:
    """A CUDA device is really there (onnxruntime-gpu lists its CUDA EP even without a driver)."""
    try:
        import torch  # heavy: only asked when onnxruntime offers the CUDA EP

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def ort_session(path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime session on the CUDA EP when usable, else CPU (check ``get_providers()[0]``)."""
    import onnxruntime as ort  # heavy (CUDA libraries): imported when a session is made

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if providers is None:
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_usable():
            providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


class OnnxRanker:
    """A TopKRanker running a repository's ``model.onnx`` with onnxruntime (the graph Triton serves).

    Speaks the repository's own item_idx; ``fusionrec.ab.offline.load_ranker`` maps it to a dataset's.

    Example:
        >>> r = OnnxRanker("artifacts/repo")                       # doctest: +SKIP
        >>> idx, score = r.topk(np.array([[0, 0, 3, 7]]), k=10)   # doctest: +SKIP
    """

    def __init__(self, repo: str | os.PathLike | ModelRepository, providers: list[str] | None = None,
                 threads: int | None = None):
        self.repository = repo if isinstance(repo, ModelRepository) else ModelRepository(repo)
        self.name = self.repository.name
        self.model_dir = self.repository.model_dir
        self.max_len: int | None = self.repository.max_len
        self.k: int | None = self.repository.k
        self.item_ids = self.repository.item_ids
        self.event_kinds = self.repository.event_kinds
        self.session = self.repository.session(providers=providers, threads=threads)

    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None,
             events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per history; ``events``: kind ids parallel to ``histories`` (ids into ``event_kinds``)."""
        if self.k is not None and k > self.k:
            raise ValueError(f"{self.name}: asked for top-{k} but the exported graph returns top-{self.k}")
        inputs = {i.name for i in self.session.get_inputs()}
        feed = feeds(histories, self.max_len, exclude, events)
        if EXCLUDE not in inputs:  # a repository exported before the EXCLUDE input existed
            if exclude is not None and (np.asarray(exclude) >= 0).any():
                raise ValueError(f"{self.name}: this graph has no {EXCLUDE} input; re-export it with 'fusionrec export'")
            feed.pop(EXCLUDE)
        if EVENTS not in inputs:  # exported before the EVENTS input existed: it reads no kinds anyway
            feed.pop(EVENTS)
        idx, score = self.session.run(OUTPUT_NAMES, feed)
        if idx.shape[1] < k:
            raise ValueError(f"{self.name}: asked for top-{k} but the graph returned {idx.shape[1]} items")
        return np.asarray(idx[:, :k], dtype=np.int64), np.asarray(score[:, :k], dtype=np.float32)
