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

import logging
import os
import signal
import socket
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fusionrec.model_repository import HISTORY, INPUTS, INVALID_IDX, ITEM_IDX, OUTPUTS, SCORE, ModelRepository, find_model_dir, model_dirs
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


class _OrtCallable:
    """Raw pytriton callable (``list[Request] -> list[dict]``) over one onnxruntime session.

    It never raises: requests are stacked into one ORT run; if that run fails, each request is run
    alone and only the failing ones get the invalid-row status (-1 / NaN).
    """

    def __init__(self, session, max_len: int, k: int):
        self.session = session
        self.max_len = max_len
        self.k = k

    def _invalid(self, n: int) -> dict[str, np.ndarray]:
        return {ITEM_IDX: np.full((n, self.k), INVALID_IDX, dtype=np.int64),
                SCORE: np.full((n, self.k), np.nan, dtype=np.float32)}

    def _ok(self, req: dict[str, Any]) -> bool:
        """Every graph input (``INPUTS``) is an [n, length] array of its type, all with the same n."""
        arrays = [req.get(t.name) for t in INPUTS]
        if not all(isinstance(a, np.ndarray) and a.dtype == np.dtype(t.dtype) and a.ndim == 2
                   and (a.shape[1] == t.dims(self.max_len, self.k) or (t.dims(self.max_len, self.k) == -1 and a.shape[1] >= 1))
                   for a, t in zip(arrays, INPUTS)):
            return False
        return len({a.shape[0] for a in arrays}) == 1

    def _complete(self, req: dict[str, Any]) -> dict[str, Any]:
        """Fill the optional inputs a request left out with their ``fill`` value."""
        h = req.get(HISTORY)
        n = int(h.shape[0]) if isinstance(h, np.ndarray) and h.ndim >= 1 else 0
        return {t.name: (np.full((n, max(1, t.dims(self.max_len, self.k))), t.fill, dtype=t.dtype)
                         if t.optional and req.get(t.name) is None else req.get(t.name)) for t in INPUTS}

    @staticmethod
    def _stack(arrays: list[np.ndarray], spec) -> np.ndarray:
        """Concatenate requests' rows; a free-length input (EXCLUDE) is padded with its fill to the widest."""
        if spec.length != "free":
            return np.concatenate(arrays)
        width = max(a.shape[1] for a in arrays)
        return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=spec.fill) for a in arrays])

    def _run(self, req: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        idx, score = self.session.run([ITEM_IDX, SCORE], {t.name: np.ascontiguousarray(req[t.name]) for t in INPUTS})
        # pytriton's strict output check rejects numpy's 'q' int64 alias that ORT returns.
        return np.asarray(idx).view(np.int64), np.asarray(score, dtype=np.float32)

    def __call__(self, requests: list) -> list[dict[str, np.ndarray]]:
        reqs = [self._complete({t.name: r.data.get(t.name) for t in INPUTS}) for r in requests]
        good = [i for i, req in enumerate(reqs) if self._ok(req)]
        out: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        for i, req in enumerate(reqs):
            if i not in good:
                h = req[HISTORY]
                out[i] = self._invalid(int(h.shape[0]) if isinstance(h, np.ndarray) and h.ndim >= 1 else 1)
        if good:
            sizes = [reqs[i][HISTORY].shape[0] for i in good]
            try:
                idx, score = self._run({t.name: self._stack([reqs[i][t.name] for i in good], t) for t in INPUTS})
                offs = np.cumsum([0, *sizes])
                for j, i in enumerate(good):
                    out[i] = {ITEM_IDX: idx[offs[j]:offs[j + 1]], SCORE: score[offs[j]:offs[j + 1]]}
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                log.exception("batched inference failed; retrying the %d requests one by one", len(good))
                for i in good:
                    try:
                        idx, score = self._run(reqs[i])
                        out[i] = {ITEM_IDX: idx, SCORE: score}
                    except Exception:  # noqa: BLE001
                        out[i] = self._invalid(reqs[i][HISTORY].shape[0])
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
            self.triton.stop()
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
                raise ValueError(f"two models named '{d.name}' ({out[d.name]} and {d}); pass a dict name -> repository")
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
    ``log_file`` sends tritonserver's own log there instead of this process's stderr.
    """
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    resolved = _resolve(models)
    if not resolved:
        raise ValueError("no model to serve")
    ensure_libpython_on_path()
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    config = TritonConfig(grpc_address=host, http_address=host, metrics_address=host, grpc_port=grpc_port,
                          http_port=http_port, metrics_port=metrics_port, exit_timeout_secs=5, log_verbose=log_verbose,
                          log_file=Path(log_file) if log_file is not None else None)
    triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]))
    handle = ServerHandle(triton, host, grpc_port, http_port, metrics_port)
    try:
        for name, mdir in resolved.items():
            repo = ModelRepository(mdir)
            mc = read_model_config(mdir / "config.pbtxt")  # batch settings: Triton's own configuration
            max_len, k = repo.max_len, repo.k
            delay = int(max_queue_delay_us if max_queue_delay_us is not None else mc.dynamic_batching.max_queue_delay_microseconds)
            pref = [int(b) for b in mc.dynamic_batching.preferred_batch_size]
            n_threads = threads or max(1, (os.cpu_count() or 1) // max(1, instances))
            callables = []
            provider = "CPUExecutionProvider"
            for _ in range(max(1, instances)):
                sess = repo.session(providers=providers, threads=n_threads)
                provider = sess.get_providers()[0]
                callables.append(_OrtCallable(sess, max_len, k))
            batcher = DynamicBatcher(max_queue_delay_microseconds=delay, preferred_batch_size=pref or None) if dynamic_batching else None
            triton.bind(
                model_name=name,
                infer_func=callables if len(callables) > 1 else callables[0],
                inputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=(t.dims(max_len, k),), optional=t.optional)
                        for t in INPUTS],
                outputs=[Tensor(name=t.name, dtype=np.dtype(t.dtype).type, shape=(t.dims(max_len, k),)) for t in OUTPUTS],
                config=ModelConfig(batching=True, max_batch_size=int(mc.max_batch_size) if dynamic_batching else 1,
                                   batcher=batcher),
                strict=True,
            )
            handle.models[name] = ServedModel(name, mdir, max_len, k, repo.n_items, int(mc.max_batch_size),
                                              delay, dynamic_batching, provider, max(1, instances))
        t0 = time.perf_counter()
        triton.run()
        log.info("Triton serving %s on grpc %s (http %s, metrics %s) in %.1fs [%s]",
                 ", ".join(handle.models), handle.grpc_url, handle.http_url, metrics_port,
                 time.perf_counter() - t0, next(iter(handle.models.values())).provider)
    except BaseException:
        handle.stop()
        raise
    return handle


def serve_forever(handle: ServerHandle) -> None:
    """Block until SIGINT/SIGTERM (or the server dies), then stop Triton so no process is orphaned."""
    done = threading.Event()

    def _on_signal(signum, _frame):
        log.info("signal %s: stopping Triton", signal.Signals(signum).name)
        done.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            if not handle.is_alive():
                log.error("Triton server exited unexpectedly")
                break
    finally:
        handle.stop()
        for s, h in previous.items():
            signal.signal(s, h)
