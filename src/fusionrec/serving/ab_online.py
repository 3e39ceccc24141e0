"""Online A/B on a real Triton server: both arms served side by side, held-out events replayed over gRPC.

:func:`replay_on_triton` is the online replay ``fusionrec.ab.run(..., online=replay_on_triton)``
takes (the ``fusionrec ab`` command and the KFP ``ab_evaluate`` component pass it): it starts ONE
local Triton server (pytriton's tritonserver, 127.0.0.1) serving the control and the treatment,
replays every held-out case as a gRPC request to the arm its user is hashed to (plus team-draft
interleaving of both arms' served lists) and stops the server.

The statistics and the replay loop live in the library (``fusionrec.ab``); this module only
starts the server and builds the two gRPC ``TopKRanker`` clients.

Example:
    >>> from fusionrec.ab import run
    >>> from fusionrec.serving.ab_online import replay_on_triton
    >>> run("artifacts/repo_id", "artifacts/repo_fused", "artifacts/dataset", "artifacts/ab", online=replay_on_triton)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from fusionrec.ab.config import ABConfig
from fusionrec.ab.offline import IdMap, MappedRanker, arm_events, case_max_len
from fusionrec.ab.online import OnlineResult, replay, replay_part
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.progress import get_logger

from .client import RecommendClient
from .server import free_ports, start_server

log = get_logger("fusionrec.serving.ab")


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
    """Start one Triton server with both models, replay the held-out cases, stop the server (an ``OnlineReplay``)."""
    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    grpc_port, http_port, metrics_port = ports or free_ports(3, host)
    models = {"control": Path(control_repo), "treatment": Path(treatment_repo)}
    log.info("starting Triton with control=%s treatment=%s on %s:%d", control_repo, treatment_repo, host, grpc_port)
    with start_server(models, host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, **server_kw) as srv:
        control = _client(srv.grpc_url, "control", control_repo, ds)
        treatment = _client(srv.grpc_url, "treatment", treatment_repo, ds)
        try:
            cases, hist = ds.eval_cases(cfg.split, max_len=case_max_len(cfg, control, treatment))
            users = ds.users.set_index("user_idx")["user_id"].astype(str)
            user_ids = users.reindex(cases["user_idx"].to_numpy()).fillna("").to_numpy()
            if (user_ids == "").any():
                raise ValueError(f"{ds.path}: {int((user_ids == '').sum())} {cfg.split} cases have a user_idx missing from users.parquet")
            # only the replay part's users (the offline comparison used the others), each request with its
            # user's whole consumed set as the EXCLUDE input
            part = replay_part(user_ids, cfg)
            cases, hist, user_ids = cases[part].reset_index(drop=True), hist[part], user_ids[part]
            res = replay(cases, hist, user_ids, control, treatment, cfg, source=f"triton grpc {srv.grpc_url}",
                         exclude=ds.consumed_before(cases), events=[arm_events(ds, cases, hist, arm) for arm in (control, treatment)])
            res.events.update(split=cfg.split, users=f"the online replay's {cfg.online_user_share:.0%} of users "
                                                     "(stable hash of user_id); the offline comparison used the others")
            return res
        finally:
            for c in (control, treatment):
                getattr(getattr(c, "inner", c), "close", lambda: None)()

