"""Online A/B as a simulated replay: users split by a stable hash, held-out events replayed.

Each held-out case becomes one request ``topk(history, k)`` to the arm its user is assigned to;
a *hit* when the user's next real item is in the returned list (a CTR-like rate). Client-side
wall time per request gives latency p50/p99 per arm. Requests are sent in time order with the
arms interleaved, so both see the same server conditions. The arms are any
:class:`~fusionrec.ranking.TopKRanker` (Triton gRPC clients in ``fusionrec.serving.ab_online``;
in-process rankers in tests), so this module imports no serving library.

The hit-rate comparison is a two-proportion z-test on requests (pooled) and, because a user can
send several requests, a user-clustered z-test (delta method) which the guardrail uses.

Example:
    >>> treat = assign_arms(["u1", "u2", "u3"], share=0.5, salt="exp-7")   # deterministic
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import pandas as pd

from fusionrec.ab.config import ABConfig
from fusionrec.ab.interleaving import InterleavingResult, interleave_evaluate
from fusionrec.ab.stats import ratio_delta_ztest, two_proportion_ztest, wilson_ci
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.progress import get_logger, progress
from fusionrec.ranking import TopKRanker, rank_cases, topk_excluding

log = get_logger(__name__)


def hash_unit(user_id: str, salt: str) -> float:
    """A stable number in [0, 1) from ``sha256(salt + ':' + user_id)`` (the same on every machine)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arms(user_ids: Sequence[str], share: float = 0.5, salt: str = "fusionrec-ab") -> np.ndarray:
    """True where the user goes to the treatment: ``hash_unit(user_id, salt) < share``.

    Deterministic, independent of order and of the other users, and a new ``salt`` reshuffles.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"treatment share must be in (0, 1), got {share}")
    return np.array([hash_unit(str(u), salt) < share for u in user_ids], dtype=bool)


@dataclass
class ArmOnline:
    """One arm of the replay."""

    arm: str
    n_users: int
    n_requests: int
    hits: int
    hit_rate: float
    hit_rate_ci_low: float
    hit_rate_ci_high: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    latency_ms: np.ndarray = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("latency_ms", None)
        return d


@dataclass
class OnlineResult:
    """The online replay's outcome (and the interleaving run on the same requests)."""

    k: int
    share: float
    salt: str
    control: ArmOnline
    treatment: ArmOnline
    lift: float
    z_pooled: float
    p_pooled: float
    z_clustered: float
    p_clustered: float
    interleaving: InterleavingResult | None = None
    source: str = "in-process"  # "triton ..." when replayed over gRPC
    requests: pd.DataFrame | None = field(default=None, repr=False)  # one row per replayed request
    events: dict = field(default_factory=dict)  # which held-out events the replay used

    def to_dict(self) -> dict:
        return {
            "k": self.k, "share": self.share, "salt": self.salt, "source": self.source,
            "control": self.control.to_dict(), "treatment": self.treatment.to_dict(),
            "lift": self.lift, "z_pooled": self.z_pooled, "p_pooled": self.p_pooled,
            "z_clustered": self.z_clustered, "p_clustered": self.p_clustered,
            "interleaving": self.interleaving.to_dict() if self.interleaving else None, "events": self.events,
        }


class OnlineReplay(Protocol):
    """Serves both model repositories somewhere, replays the held-out cases, returns the result.

    ``fusionrec.ab.run(..., online=...)`` calls it after the offline comparison; the serving
    package supplies the Triton one (``fusionrec.serving.ab_online.replay_on_triton``), which
    builds its clients and calls :func:`replay`.
    """

    def __call__(self, control: Path, treatment: Path, dataset: DatasetArtifact, cfg: ABConfig) -> OnlineResult: ...


def _arm(name: str, users: np.ndarray, hits: np.ndarray, lat: np.ndarray, confidence: float) -> ArmOnline:
    n, h = len(hits), int(hits.sum())
    lo, hi = wilson_ci(h, n, confidence)
    return ArmOnline(
        arm=name, n_users=int(len(np.unique(users))), n_requests=n, hits=h,
        hit_rate=h / n if n else float("nan"), hit_rate_ci_low=lo, hit_rate_ci_high=hi,
        latency_p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        latency_p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        latency_mean_ms=float(lat.mean()) if len(lat) else float("nan"),
        latency_ms=lat,
    )


REPLAY_PART_SALT = ":replay-part"


def replay_part(user_ids: Sequence[str], cfg: ABConfig) -> np.ndarray:
    """True where a user's held-out events belong to the online replay, False: to the offline comparison.

    When both parts run, they use disjoint users (a stable hash, ``online_user_share`` of them to the
    replay), so the replay's p-values are evidence independent of the offline test's, not a second
    look at the same events.
    """
    return np.array([hash_unit(str(u), cfg.online_salt + REPLAY_PART_SALT) < cfg.online_user_share for u in user_ids], dtype=bool)


def replay(
    cases: pd.DataFrame,
    histories: np.ndarray,
    user_ids: Sequence[str],
    control: TopKRanker,
    treatment: TopKRanker,
    cfg: ABConfig,
    clock: Callable[[], float] = time.perf_counter,
    source: str = "in-process",
    exclude: np.ndarray | None = None,
    events: Sequence[np.ndarray | None] | None = None,
) -> OnlineResult:
    """Replay each case as one request to its user's arm; then interleave both arms on every case.

    ``cases`` (from ``DatasetArtifact.eval_cases``) needs ``user_idx``, ``item_idx`` and
    ``timestamp``; ``user_ids`` are the external ids the hash split uses (one per case);
    ``exclude`` (int64 [n, E], -1 padded) is sent with each request: the user's whole consumed set.
    ``events``: per arm (control, treatment), the behaviour kind ids parallel to ``histories`` for an arm
    that reads them (else None).
    """
    n = len(cases)
    if len(histories) != n or len(user_ids) != n:
        raise ValueError("cases, histories and user_ids must have the same length")
    if n == 0:
        raise ValueError("no held-out cases to replay")
    order = np.argsort(cases["timestamp"].to_numpy() if "timestamp" in cases else np.arange(n), kind="stable")
    if cfg.online_max_requests is not None and n > cfg.online_max_requests:
        # keep whole users (a deterministic subset by hash) so per-user clustering stays intact
        uniq = sorted(set(map(str, user_ids)), key=lambda u: hash_unit(u, cfg.online_salt + ":sample"))
        keep_users: set[str] = set()
        total = 0
        counts = pd.Series(list(map(str, user_ids))).value_counts()
        for u in uniq:
            if total + counts[u] > cfg.online_max_requests and keep_users:
                break
            keep_users.add(u)
            total += int(counts[u])
        order = np.array([i for i in order if str(user_ids[i]) in keep_users], dtype=np.int64)
        log.info("online replay capped at %d requests (%d users)", len(order), len(keep_users))
    uids = np.asarray([str(u) for u in user_ids], dtype=object)
    treat = assign_arms(uids, cfg.online_share, cfg.online_salt)
    targets = cases["item_idx"].to_numpy(np.int64)
    arms = (control, treatment)
    k = cfg.online_k

    # warm-up (connections, first-call allocations): not timed, not counted
    def ex(rows):
        return None if exclude is None else exclude[rows]

    arm_events = tuple(events) if events is not None else (None, None)

    def ev(a: int, rows):
        return None if arm_events[a] is None else arm_events[a][rows]

    for a, arm in enumerate(arms):
        for i in order[: cfg.online_warmup]:
            topk_excluding(arm, histories[i : i + 1], k, ex(slice(i, i + 1)), ev(a, slice(i, i + 1)))

    hits = np.zeros(n, dtype=bool)
    lat = np.zeros(n, dtype=np.float64)
    for i in progress(order, desc="replay", unit="req"):
        a = int(treat[i])
        arm = arms[a]
        t0 = clock()
        idx, _ = topk_excluding(arm, histories[i : i + 1], k, ex(slice(i, i + 1)), ev(a, slice(i, i + 1)))
        lat[i] = (clock() - t0) * 1000.0
        hits[i] = bool(np.any(np.asarray(idx)[0, :k] == targets[i]))

    sel_t = order[treat[order]]
    sel_c = order[~treat[order]]
    users_c, users_t = uids[sel_c], uids[sel_t]
    arm_c = _arm("control", users_c, hits[sel_c], lat[sel_c], cfg.confidence)
    arm_t = _arm("treatment", users_t, hits[sel_t], lat[sel_t], cfg.confidence)
    zp = two_proportion_ztest(arm_t.hits, arm_t.n_requests, arm_c.hits, arm_c.n_requests) if arm_t.n_requests and arm_c.n_requests else None
    zc = _clustered(users_t, hits[sel_t], users_c, hits[sel_c]) if arm_t.n_requests and arm_c.n_requests else None
    lift = arm_t.hit_rate / arm_c.hit_rate - 1.0 if arm_c.hit_rate else (0.0 if arm_t.hit_rate == 0 else float("inf"))

    # interleaving: both arms' lists for every replayed request (batched; not timed)
    top_c = rank_cases(control, histories[order], cfg.interleaving_k, cfg.batch_size, desc="interleave control", exclude=ex(order),
                       events=ev(0, order))
    top_t = rank_cases(treatment, histories[order], cfg.interleaving_k, cfg.batch_size, desc="interleave treatment",
                       exclude=ex(order), events=ev(1, order))
    inter = interleave_evaluate(top_c, top_t, targets[order], uids[order], k=cfg.interleaving_k, seed=cfg.seed, unit=cfg.interleaving_unit)

    requests = pd.DataFrame({
        "case_id": (cases["case_id"].to_numpy() if "case_id" in cases else np.arange(n))[order],
        "user_id": uids[order].astype(str), "arm": np.where(treat[order], "treatment", "control"),
        "target": targets[order], "hit": hits[order], "latency_ms": lat[order],
        "interleaving_credit": inter.per_request_credit,
    })
    return OnlineResult(
        k=k, share=cfg.online_share, salt=cfg.online_salt, control=arm_c, treatment=arm_t, lift=float(lift),
        z_pooled=float(zp.statistic) if zp else float("nan"), p_pooled=float(zp.pvalue) if zp else float("nan"),
        z_clustered=float(zc.statistic) if zc else float("nan"), p_clustered=float(zc.pvalue) if zc else float("nan"),
        interleaving=inter, source=source, requests=requests,
        events={"split": "as the cases given", "n_cases": int(len(order)), "n_users": int(len(np.unique(uids[order]))),
                "whole_history_excluded": exclude is not None},
    )


def _clustered(users_t, hits_t, users_c, hits_c):
    def per_user(users, hits):
        df = pd.DataFrame({"u": users, "h": hits.astype(np.float64)}).groupby("u")["h"]
        return df.sum().to_numpy(), df.size().to_numpy(np.float64)

    ht, rt = per_user(users_t, hits_t)
    hc, rc = per_user(users_c, hits_c)
    return ratio_delta_ztest(ht, rt, hc, rc)
