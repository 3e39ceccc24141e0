"""Online A/B on a real Triton server: both arms served side by side, held-out events replayed over gRPC.

``run_with_triton`` is what the ``fusionrec ab`` command and the KFP ``ab_evaluate`` component
call: it scores both arms offline in-process (onnxruntime on the exported graphs), starts ONE
local Triton server (pytriton's tritonserver, 127.0.0.1) serving the control and the treatment,
replays every held-out case as a gRPC request to the arm its user is hashed to (plus team-draft
interleaving of both arms' served lists), stops the server and writes the ``ab_report`` artifact.

The statistics and the replay loop live in the library (``fusionrec.ab``); this module only
starts the server and builds the two gRPC ``TopKRanker`` clients.

Example:
    >>> from fusionrec.serving.ab_online import run_with_triton
    >>> run_with_triton("artifacts/repo_id", "artifacts/repo_fused", "artifacts/dataset", "artifacts/ab", ABConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fusionrec.ab.config import ABConfig
from fusionrec.ab.offline import IdMap, MappedRanker, case_history_len, load_ranker, offline_compare
from fusionrec.ab.online import OnlineResult, replay
from fusionrec.ab.report import write_report
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.progress import get_logger

from .client import RecommendClient
from .server import start_server

log = get_logger("fusionrec.serving.ab")


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


def _client(url: str, name: str, repo: str | os.PathLike, ds: DatasetArtifact):
    """A gRPC client of served model ``name`` speaking the dataset's item_idx."""
    client = RecommendClient(url, model=name, repo=repo)
    if client.item_ids is None:
        return client
    idmap = IdMap.build(ds.item_ids, [str(x) for x in client.item_ids])
    return client if idmap.identity else MappedRanker(client, idmap)


def replay_on_triton(
    control_repo: str | os.PathLike,
    treatment_repo: str | os.PathLike,
    dataset: str | os.PathLike | DatasetArtifact,
    cfg: ABConfig,
    host: str = "127.0.0.1",
    ports: tuple[int, int, int] | None = None,
    **server_kw,
) -> OnlineResult:
    """Start one Triton server with both models, replay the held-out cases, stop the server."""
    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    grpc_port, http_port, metrics_port = ports or free_ports(3, host)
    models = {"control": Path(control_repo), "treatment": Path(treatment_repo)}
    log.info("starting Triton with control=%s treatment=%s on %s:%d", control_repo, treatment_repo, host, grpc_port)
    with start_server(models, host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, **server_kw) as srv:
        control = _client(srv.grpc_url, "control", control_repo, ds)
        treatment = _client(srv.grpc_url, "treatment", treatment_repo, ds)
        try:
            cases, hist = ds.eval_cases(cfg.split, max_len=case_history_len(cfg, control, treatment))
            users = ds.users.set_index("user_idx")["user_id"].astype(str)
            user_ids = users.reindex(cases["user_idx"].to_numpy()).fillna("").to_numpy()
            if (user_ids == "").any():
                raise ValueError(f"{ds.path}: {int((user_ids == '').sum())} {cfg.split} cases have a user_idx missing from users.parquet")
            return replay(cases, hist, user_ids, control, treatment, cfg, source=f"triton grpc {srv.grpc_url}")
        finally:
            for c in (control, treatment):
                getattr(getattr(c, "inner", c), "close", lambda: None)()


def run_with_triton(
    control_repo: str | os.PathLike,
    treatment_repo: str | os.PathLike,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ABConfig | None = None,
    online: bool = True,
    **server_kw,
) -> Path:
    """Offline (in-process) + online replay and interleaving (Triton) + decision -> ``ab_report`` at ``out``.

    ``online=False`` skips the server (the report says the online part was not run).
    """
    cfg = cfg or ABConfig()
    ds = DatasetArtifact(dataset)
    if online:
        for role, path in (("control", control_repo), ("treatment", treatment_repo)):
            if not any(Path(path).glob("*/1/model.onnx")) and not (Path(path) / "1" / "model.onnx").exists():
                raise ValueError(f"{role} {path} is not a model repository (no <name>/1/model.onnx): the online replay serves "
                                 "exported models; run `fusionrec export` first, or evaluate offline only (--no-online)")
    control = load_ranker(control_repo, ds)
    treatment = load_ranker(treatment_repo, ds)
    offline = offline_compare(control, treatment, ds, cfg)
    online_res = replay_on_triton(control_repo, treatment_repo, ds, cfg, **server_kw) if online else None
    names = {"control": Path(control_repo).name, "treatment": Path(treatment_repo).name}
    inputs = {"control": control_repo, "treatment": treatment_repo, "dataset": dataset}
    return write_report(out, offline, online_res, cfg, names, inputs)
