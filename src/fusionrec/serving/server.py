"""Local Triton server: the tritonserver bundled in ``nvidia-pytriton`` serving exported repositories.

Each served model binds an onnxruntime session over ``<name>/1/model.onnx`` (CUDA EP when a GPU
is usable, CPU otherwise) behind Triton's dynamic batcher, with the batch settings read from the
repository's ``config.pbtxt``. Several models can share one server (the A/B replay serves control
and treatment side by side).

Error isolation: Triton itself rejects wrong dtype, wrong shape and batches over
``max_batch_size`` per request, before batching. Ids outside ``[0, n_items]`` are handled by the
exported graph (that row comes back with ``ITEM_IDX == -1`` and ``SCORE == NaN``) because
pytriton, like the onnxruntime backend, can only fail a *whole* dynamic batch; the callable here
never raises, so one bad request never fails its neighbours. ``RecommendClient`` turns a -1 row
into a ``ValueError``.

Example:
    >>> from fusionrec.serving.server import start_server
    >>> with start_server({"control": "artifacts/repo_a", "treatment": "artifacts/repo_b"}, grpc_port=8001) as srv:
    ...     print(srv.grpc_url)                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from fusionrec.artifacts import StepError, read_json
from fusionrec.model_repository import (INVALID_IDX, RANKER, GraphTensor, ModelRepository, find_model_dir, graph_io, graph_path,
                                        model_dirs, ort_session)
from fusionrec.progress import get_logger

from .config import read_model_config

log = get_logger("fusionrec.serving")


def free_ports(n: int = 3, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (held together while the OS picks them)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def ensure_libpython_on_path() -> str | None:
    """Put the interpreter's LIBDIR on ``LD_LIBRARY_PATH`` for Triton's Python-backend stub.

    Under a pyenv (or any non-system) Python the stub, started by tritonserver, must find the
    same ``libpython3.X.so`` as this interpreter, else it dies with
    ``'_thread.RLock' object has no attribute '_recursion_count'``. pytriton starts tritonserver
    with a copy of ``os.environ``, and the stub inherits it, so setting it here before the server
    starts is enough (no re-exec needed).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not Path(libdir).is_dir():
        return None
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir not in parts:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *parts])
    return libdir


class ServerStartError(StepError):
    """The server cannot start (a port in use, tritonserver failing): one clear line, no traceback."""


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """Fail at once when a port is taken (tritonserver would retry for two minutes, then time out).

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen()
    ...     check_ports("127.0.0.1", {"grpc": s.getsockname()[1]})
    Traceback (most recent call last):
    ...
    fusionrec.serving.server.ServerStartError: port ... (grpc) is in use on 127.0.0.1; choose another (--grpc-port) or stop what holds it
    """
    seen: dict[int, str] = {}
    for role, port in ports.items():
        if port in seen:
            raise ServerStartError(f"the {seen[port]} and {role} ports are both {port}; give each its own")
        seen[port] = role
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR: a port in TIME_WAIT is free for Triton too; a listening one still fails
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServerStartError(f"port {port} ({role}) is in use on {host}; choose another (--{role}-port) "
                                           "or stop what holds it") from None
                raise ServerStartError(f"cannot bind {host}:{port} ({role}): {exc.strerror}") from None


def _silence_server_echo(triton) -> None:
    """pytriton 0.7 prints every line tritonserver writes to stdout (``TritonServer(verbose=True)``,
    not configurable): with a log file those lines are CUDA/NVML/DCGM noise on a CPU machine.
    Initialise its server object early and turn the echo off; a pytriton without these private
    attributes keeps echoing, nothing else changes."""
    init = getattr(triton, "_initialize_server", None)
    if init is None or getattr(triton, "_triton_server", None) is not None:
        return
    init()
    server = getattr(triton, "_triton_server", None)
    if server is not None and hasattr(server, "_verbose"):
        server._verbose = False


@dataclass
class ServedModel:
    """One model bound on the server."""

    name: str
    model_dir: Path
    max_len: int
    k: int
    n_items: int
    max_batch_size: int
    max_queue_delay_us: int
    dynamic_batching: bool
    provider: str = "CPUExecutionProvider"
    instances: int = 1
    kind: str = "ranker"
    """``ranker``, or a companion: ``query`` / ``explain``."""


class _OrtCallable:
    """Raw pytriton callable (``list[Request] -> list[dict]``) over one onnxruntime session.

    Generic over the graph's tensors (``graph_io``: the ranker, and the query and explain
    companions). It never raises: requests are stacked into one ORT run; if that run fails, each
    request is run alone and only the failing ones get the invalid-row status (-1 in int64
    outputs, NaN in float ones).
    """

    def __init__(self, session, inputs: Sequence[GraphTensor], outputs: Sequence[GraphTensor]):
        self.session = session
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def _invalid(self, n: int) -> dict[str, np.ndarray]:
        return {t.name: np.full((n, *t.dims), INVALID_IDX if t.dtype == "int64" else np.nan, dtype=np.dtype(t.dtype))
                for t in self.outputs}

    def _ok(self, req: dict[str, Any]) -> bool:
        """Every graph input is an array of its dtype and per-row shape (a free axis, -1, takes any length
        >= 1), all with the same number of rows."""
        arrays = [req.get(t.name) for t in self.inputs]
        if not all(isinstance(a, np.ndarray) and a.dtype == np.dtype(t.dtype) and a.ndim == 1 + len(t.dims)
                   and all(n == d or (d == -1 and n >= 1) for n, d in zip(a.shape[1:], t.dims))
                   for a, t in zip(arrays, self.inputs)):
            return False
        return len({a.shape[0] for a in arrays}) == 1

    def _complete(self, req: dict[str, Any]) -> dict[str, Any]:
        """Fill the optional inputs a request left out with their ``fill`` value."""
        n = self._rows(req)
        return {t.name: (np.full((n, *(max(1, d) for d in t.dims)), t.fill, dtype=t.dtype) if t.optional and req.get(t.name) is None
                         else req.get(t.name)) for t in self.inputs}

    @staticmethod
    def _stack(arrays: list[np.ndarray], spec: GraphTensor) -> np.ndarray:
        """Concatenate requests' rows; a free-length input (EXCLUDE) is padded with its fill to the widest."""
        if -1 not in spec.dims:
            return np.concatenate(arrays)
        width = max(a.shape[1] for a in arrays)
        return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=spec.fill) for a in arrays])

    def _run(self, req: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run([t.name for t in self.outputs], {t.name: np.ascontiguousarray(req[t.name]) for t in self.inputs})
        # pytriton's strict output check rejects numpy's 'q' int64 alias that ORT returns.
        return {t.name: (np.asarray(r).view(np.int64) if t.dtype == "int64" else np.asarray(r, dtype=np.float32))
                for t, r in zip(self.outputs, res)}

    def _rows(self, req: dict[str, Any]) -> int:
        a = req.get(self.inputs[0].name)  # the first input is never optional (HISTORY / INPUT_IDS)
        return int(a.shape[0]) if isinstance(a, np.ndarray) and a.ndim >= 1 else 1

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        reqs = [self._complete({t.name: r.data.get(t.name) for t in self.inputs}) for r in requests]
        good = [i for i, req in enumerate(reqs) if self._ok(req)]
        out: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        for i, req in enumerate(reqs):
            if i not in good:
                out[i] = self._invalid(self._rows(req))
        if good:
            sizes = [self._rows(reqs[i]) for i in good]
            try:
                res = self._run({t.name: self._stack([reqs[i][t.name] for i in good], t) for t in self.inputs})
                offs = np.cumsum([0, *sizes])
                for j, i in enumerate(good):
                    out[i] = {name: arr[offs[j]:offs[j + 1]] for name, arr in res.items()}
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                log.exception("batched inference failed; retrying the %d requests one by one", len(good))
                for i in good:
                    try:
                        out[i] = self._run(reqs[i])
                    except Exception:  # noqa: BLE001
                        out[i] = self._invalid(self._rows(reqs[i]))
        return out  # type: ignore[return-value]


@dataclass
class ServerHandle:
    """A running local Triton server; ``stop()`` (or leaving the ``with`` block) shuts it down."""

    triton: Any
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    models: dict[str, ServedModel] = field(default_factory=dict)
    workspace: Path | None = None
    log_file: Path | None = None
    _stopped: bool = False

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def is_alive(self) -> bool:
        return not self._stopped and bool(self.triton.is_alive())

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            try:
                self.triton.stop()
            except Exception as exc:  # noqa: BLE001 - pytriton cannot stop a server that never started
                log.warning("stopping Triton: %s: %s", type(exc).__name__, exc)
            finally:
                # pytriton's own clean-up keeps dot-files and then leaves the folder behind
                if self.workspace is not None:
                    shutil.rmtree(self.workspace, ignore_errors=True)
            log.info("Triton server on %s stopped", self.grpc_url)

    def wait(self, poll_s: float = 0.5) -> None:
        """Block until the server dies or ``stop()`` is called (from a signal handler, say)."""
        while self.is_alive():
            time.sleep(poll_s)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _resolve(models: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | str | os.PathLike) -> dict[str, Path]:
    if isinstance(models, (str, os.PathLike)):
        models = [models]
    if isinstance(models, Mapping):
        return {str(name): find_model_dir(path, str(name)) for name, path in models.items()}
    out = {}
    for path in models:
        for d in model_dirs(path):
            if d.name in out:
                raise ValueError(f"two models named '{d.name}' ({out[d.name]} and {d}): name each one, "
                                 f"`fusionrec serve control={out[d.name].parent} treatment={d.parent}` "
                                 "(from Python: a dict name -> repository)")
            out[d.name] = d
    return out


def start_server(
    models: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | str | os.PathLike,
    host: str = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    max_queue_delay_us: int | None = None,
    instances: int = 1,
    dynamic_batching: bool = True,
    threads: int | None = None,
    providers: list[str] | None = None,
    log_verbose: int = 0,
    log_file: str | os.PathLike | None = None,
) -> ServerHandle:
    """Start tritonserver (from nvidia-pytriton) serving each exported model; return its handle.

    ``models``: a model repository path (every model in it), a list of them, or a dict
    ``served name -> repository (or model folder)``. Batch settings come from each
    ``config.pbtxt``; ``max_queue_delay_us`` overrides the queue delay, ``dynamic_batching=False``
    serves every request alone (the baseline the benchmark compares against). Statistics and
    repository endpoints are left unrestricted (loopback only) so tools can read them.
    ``log_file`` sends tritonserver's own log there (and nothing of it to this process's output)
    instead of this process's stdout. The ports are checked first (a taken one fails at once), and
    pytriton's workspace is removed whatever way the server ends.
    """
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
    from pytriton.utils.workspace import Workspace

    resolved = _resolve(models)
    if not resolved:
        raise ValueError("no model to serve")
    check_ports(host, {"grpc": grpc_port, "http": http_port, "metrics": metrics_port})
    ensure_libpython_on_path()
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    if log_file is not None:
        log_file = Path(log_file).resolve()
        log_file.parent.mkdir(parents=True, exist_ok=True)
    config = TritonConfig(grpc_address=host, http_address=host, metrics_address=host, grpc_port=grpc_port,
                          http_port=http_port, metrics_port=metrics_port, exit_timeout_secs=5, log_verbose=log_verbose,
                          log_file=log_file)
    workspace = Workspace()
    triton = Triton(config=config, workspace=workspace, security_config=TritonSecurityConfig(restricted_endpoints=[]))
    handle = ServerHandle(triton, host, grpc_port, http_port, metrics_port, workspace=workspace.path, log_file=log_file)
    try:
        if log_file is not None:
            _silence_server_echo(triton)
        for name, mdir in resolved.items():
            kind, inputs, outputs = graph_io(mdir)
            mc = read_model_config(mdir / "config.pbtxt")  # batch settings: Triton's own configuration
            if kind == RANKER:
                repo = ModelRepository(mdir)
                max_len, k, n_items = repo.max_len, repo.k, repo.n_items
            else:  # a companion (query / explain): sizes from its own report
                report = read_json(mdir / "export_report.json")
                max_len, k, n_items = int(report.get("max_len") or 0), int(report.get("k") or report.get("explain_k") or 0), \
                    int(report.get("n_items") or 0)
            delay = int(max_queue_delay_us if max_queue_delay_us is not None else mc.dynamic_batching.max_queue_delay_microseconds)
            pref = [int(b) for b in mc.dynamic_batching.preferred_batch_size]
            n_threads = threads or max(1, (os.cpu_count() or 1) // max(1, instances))
            callables = []
            provider = "CPUExecutionProvider"
            onnx_path = graph_path(mdir)
            for _ in range(max(1, instances)):
                sess = ort_session(onnx_path, providers=providers, threads=n_threads)
                provider = sess.get_providers()[0]
                callables.append(_OrtCallable(sess, inputs, outputs))
            batcher = DynamicBatcher(max_queue_delay_microseconds=delay, preferred_batch_size=pref or None) if dynamic_batching else None
            triton.bind(
                model_name=name,
                infer_func=callables if len(callables) > 1 else callables[0],
                inputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=t.dims, optional=t.optional) for t in inputs],
                outputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=t.dims) for t in outputs],
                config=ModelConfig(batching=True, max_batch_size=int(mc.max_batch_size) if dynamic_batching else 1,
                                   batcher=batcher),
                strict=True,
            )
            handle.models[name] = ServedModel(name, mdir, max_len, k, n_items, int(mc.max_batch_size),
                                              delay, dynamic_batching, provider, max(1, instances), kind)
        t0 = time.perf_counter()
        try:
            triton.run()
        except Exception as exc:  # pytriton raises its own timeout/startup errors with long tracebacks
            where = f"; Triton's log: {log_file}" if log_file is not None else ""
            first = (str(exc).strip().splitlines() or [""])[0][:300]  # the rest is a model's traceback
            raise ServerStartError(f"Triton did not start ({type(exc).__name__}: {first}){where}") from exc
        log.info("Triton serving %s on grpc %s (http %s, metrics %s) in %.1fs [%s]",
                 ", ".join(handle.models), handle.grpc_url, handle.http_url, metrics_port,
                 time.perf_counter() - t0, next(iter(handle.models.values())).provider)
    except BaseException:
        handle.stop()
        raise
    return handle


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event that SIGINT/SIGTERM set while the block runs (the previous handlers come back after it).

    Enter it before ``start_server``: a signal that lands while the server is still starting (Triton already
    answering, the handlers of ``serve_forever`` not yet in place) then stops it cleanly instead of killing
    this process with the default handler and leaving Triton behind.

    >>> with stop_requested() as stop:  # doctest: +SKIP
    ...     serve_forever(start_server(models), stop)
    """
    done = threading.Event()

    def _on_signal(signum, _frame):
        log.info("signal %s: stopping Triton", signal.Signals(signum).name)
        done.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield done
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve_forever(handle: ServerHandle, stop: threading.Event | None = None) -> None:
    """Block until ``stop`` is set (by default: SIGINT/SIGTERM, see ``stop_requested``) or the server dies, then stop
    Triton so no process is orphaned."""
    if stop is None:
        with stop_requested() as stop:
            return serve_forever(handle, stop)
    try:
        while not stop.wait(0.5):
            if not handle.is_alive():
                log.error("Triton server exited unexpectedly")
                break
    finally:
        handle.stop()
