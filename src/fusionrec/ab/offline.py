"""Offline A/B: both arms rank every held-out case over the full catalog, paired per user.

Each arm is a :class:`~fusionrec.ranking.TopKRanker`. A model repository (``fusionrec export``)
is scored in-process by :class:`~fusionrec.model_repository.OnnxRanker` on the very ONNX graph Triton serves (top-K inside
the graph, K=100 by default: Recall/NDCG@<=K are exact, MRR is MRR@K); a model artifact
(``fusionrec train``) through ``fusionrec.models.load_model``.

Arms may have been exported against different item tables (a production model from last week's
catalog): every ranker is wrapped so it speaks the *dataset's* item_idx, mapping through the
external item ids of the repository's ``item_ids.json`` (items unknown to an arm are dropped from
its histories and cannot be recommended by it).

Example:
    >>> res = offline_compare(load_ranker(repo_a, ds), load_ranker(repo_b, ds), ds, ABConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.ab.config import ABConfig
from fusionrec.ab.online import replay_part
from fusionrec.ab.stats import PairedComparison, holm, paired_compare
from fusionrec.artifacts import read_manifest
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.metrics import coverage_by_count, item_coverage, topk_metrics
from fusionrec.model_repository import OnnxRanker
from fusionrec.models import load_model
from fusionrec.progress import get_logger
from fusionrec.ranking import TopKRanker, event_vocabulary, left_pad, rank_cases, topk_excluding

log = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Item id spaces
# --------------------------------------------------------------------------------------------
@dataclass
class IdMap:
    """Maps the dataset's item_idx to a model's item_idx and back (0 = unknown/padding)."""

    to_model: np.ndarray  # [n_dataset_items+1] -> model idx
    from_model: np.ndarray  # [n_model_items+1] -> dataset idx
    identity: bool
    unknown_to_model: int = 0  # dataset items the model does not know

    @classmethod
    def build(cls, dataset_ids: np.ndarray | list[str], model_ids: list[str]) -> "IdMap":
        ds = [str(x) for x in dataset_ids]
        model_ids = [str(x) for x in model_ids]
        if ds == model_ids:
            ar = np.arange(len(ds), dtype=np.int64)
            return cls(ar, ar.copy(), True, 0)
        pos = {iid: i for i, iid in enumerate(model_ids) if i > 0 and iid != ""}
        to_model = np.array([0] + [pos.get(iid, 0) for iid in ds[1:]], dtype=np.int64)
        ds_pos = {iid: i for i, iid in enumerate(ds) if i > 0}
        from_model = np.array([0] + [ds_pos.get(iid, 0) for iid in model_ids[1:]], dtype=np.int64)
        return cls(to_model, from_model, False, int((to_model[1:] == 0).sum()))

    def histories_to_model(self, histories: np.ndarray) -> np.ndarray:
        if self.identity:
            return histories
        mapped = self.to_model[histories]
        length = histories.shape[1]
        return left_pad([row[row > 0] for row in mapped], length)

    def events_to_model(self, histories: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Kind ids parallel to ``histories``, moved as :meth:`histories_to_model` moves their items."""
        if self.identity:
            return events
        mapped = self.to_model[histories]
        return left_pad([e[row > 0] for row, e in zip(mapped, np.asarray(events, dtype=np.int64))], histories.shape[1])

    def items_from_model(self, items: np.ndarray) -> np.ndarray:
        if self.identity:
            return items
        items = np.asarray(items, dtype=np.int64)
        safe = np.where((items >= 0) & (items < len(self.from_model)), items, 0)
        return self.from_model[safe]


class MappedRanker:
    """Wrap a ranker that speaks a model's item_idx so it speaks the dataset's (a TopKRanker)."""

    def __init__(self, inner: TopKRanker, idmap: IdMap):
        self.inner = inner
        self.idmap = idmap
        self.max_len = inner.max_len
        self.k = inner.k
        self.event_kinds = event_vocabulary(inner)

    def topk(self, histories: np.ndarray, k: int, exclude: np.ndarray | None = None,
             events: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        histories = np.asarray(histories, dtype=np.int64)
        h = self.idmap.histories_to_model(histories)
        ev = None if events is None else self.idmap.events_to_model(histories, events)
        mapped = None
        if exclude is not None:
            ex = np.asarray(exclude, dtype=np.int64)
            mapped = np.where(ex > 0, self.idmap.to_model[np.maximum(ex, 0)], -1)
            mapped = np.where(mapped > 0, mapped, -1)  # items this model does not know cannot be returned anyway
        idx, score = topk_excluding(self.inner, h, k, mapped, ev)
        return self.idmap.items_from_model(idx), score


def load_ranker(path: str | os.PathLike, dataset: DatasetArtifact | str | os.PathLike) -> TopKRanker:
    """A TopKRanker in the dataset's item_idx space from a model repository or a model artifact."""
    ds = dataset if isinstance(dataset, DatasetArtifact) else DatasetArtifact(dataset)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    kind = None
    if (path / "manifest.json").exists():
        kind = read_manifest(path).get("kind")
    if kind == "model":
        model = load_model(path)
        if model.n_items != ds.n_items:  # a model artifact speaks item_idx: another catalog's would be noise
            raise ValueError(f"model {path} has {model.n_items} items, dataset {ds.path} has {ds.n_items}: "
                             "compare models on the dataset they were trained on")
        return model
    ranker = OnnxRanker(path)
    if ranker.item_ids is None:
        log.warning("%s has no item_ids.json: assuming it uses the dataset's item_idx", path)
        return ranker
    idmap = IdMap.build(ds.item_ids, ranker.item_ids)
    if idmap.identity:
        return ranker
    # A production control may lack a few new items (they are cold to it); a model that does not
    # know most of the catalog was built for another dataset, and its metrics would mean nothing.
    if idmap.unknown_to_model * 2 > ds.n_items:
        raise ValueError(f"model {path} has {len(ranker.item_ids) - 1} items and knows only {ds.n_items - idmap.unknown_to_model} "
                         f"of the {ds.n_items} items of dataset {ds.path}: was it exported from another dataset?")
    if idmap.unknown_to_model:
        log.warning("%s does not know %d of the dataset's items (they are dropped from its inputs)", path, idmap.unknown_to_model)
    return MappedRanker(ranker, idmap)


# --------------------------------------------------------------------------------------------
# Ranking and the paired comparison
# --------------------------------------------------------------------------------------------
@dataclass
class OfflineResult:
    """Everything the offline part measured."""

    comparisons: list[PairedComparison]
    coverage: dict[str, float]
    per_case: pd.DataFrame  # case_id, user_idx, segment, target, <metric>_control, <metric>_treatment
    topk_control: np.ndarray = field(repr=False)
    topk_treatment: np.ndarray = field(repr=False)
    primary: PairedComparison | None = None
    events: dict = field(default_factory=dict)  # which held-out events this part used (see ab.online.replay_part)
    coverage_bands: dict[str, list[dict]] | None = None  # per arm: metrics.coverage_by_count (needs the train counts)

    def get(self, metric: str, segment: str) -> PairedComparison | None:
        for c in self.comparisons:
            if c.metric == metric and c.segment == segment:
                return c
        return None


def per_user_sums(per_case: pd.DataFrame, column: str, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, per-user sum of ``column``, cases per user) over the rows in ``mask``."""
    df = per_case if mask is None else per_case[mask]
    g = df.groupby("user_idx", sort=True)[column]
    return g.sum().index.to_numpy(), g.sum().to_numpy(np.float64), g.size().to_numpy(np.float64)


def compare_per_case(per_case: pd.DataFrame, cfg: ABConfig) -> list[PairedComparison]:
    """Paired comparisons of every (metric, segment) in ``cfg`` from a per-case table.

    ``per_case`` needs ``user_idx``, ``segment`` and ``<metric>_control``/``<metric>_treatment``.
    Holm's correction is applied over every comparison except the primary one.
    """
    out: list[PairedComparison] = []
    for si, segment in enumerate(cfg.segments):
        mask = None if segment == "overall" else (per_case["segment"] == segment).to_numpy()
        if mask is not None and not mask.any():
            log.info("no %s cases: segment skipped", segment)
            continue
        for mi, metric in enumerate(cfg.metrics):
            users, t, n = per_user_sums(per_case, f"{metric}_treatment", mask)
            _, c, _ = per_user_sums(per_case, f"{metric}_control", mask)
            out.append(
                paired_compare(t, c, n, metric=metric, segment=segment, n_resamples=cfg.bootstrap_resamples,
                               confidence=cfg.confidence, seed=cfg.seed + 1000 * si + mi)
            )
    key = "p_ttest" if cfg.primary_test == "ttest" else "p_wilcoxon"
    secondary = [c for c in out if not (c.metric == cfg.primary_metric and c.segment == cfg.primary_segment)]
    for c, p in zip(secondary, holm([getattr(c, key) for c in secondary])):
        c.p_holm = float(p)
    return out


def case_max_len(cfg: ABConfig, *rankers: TopKRanker, default: int = 50) -> int:
    """``cfg.max_len``, else the longest L any arm takes (each arm then keeps its own most recent L)."""
    if cfg.max_len is not None:
        return cfg.max_len
    lens = [r.max_len for r in rankers if r.max_len]
    return max(lens) if lens else default


def arm_events(dataset: DatasetArtifact, cases: pd.DataFrame, histories: np.ndarray, ranker: TopKRanker) -> np.ndarray | None:
    """The behaviour kind ids of each case's history in ``ranker``'s vocabulary (None when it reads no kinds)."""
    kinds = event_vocabulary(ranker)
    return dataset.history_kinds(cases, histories.shape[1], kinds) if kinds else None


def offline_compare(control: TopKRanker, treatment: TopKRanker, dataset: DatasetArtifact, cfg: ABConfig,
                    leave_replay_part: bool = False) -> OfflineResult:
    """Rank the held-out cases with both arms and compare them per user.

    ``leave_replay_part``: when an online replay runs too, compare only the users it does not replay
    (``fusionrec.ab.online.replay_part``), so the two parts rest on different events.
    """
    cases, hist = dataset.eval_cases(cfg.split, max_len=case_max_len(cfg, control, treatment))
    events = {"split": cfg.split, "users": "all"}
    if leave_replay_part:
        users = dataset.users.set_index("user_idx")["user_id"].astype(str).reindex(cases["user_idx"].to_numpy()).fillna("")
        keep = ~replay_part(users.to_numpy(), cfg)
        cases, hist = cases[keep].reset_index(drop=True), hist[keep]
        events["users"] = f"those outside the online replay's {cfg.online_user_share:.0%} (stable hash of user_id)"
    events.update(n_cases=int(len(cases)), n_users=int(cases["user_idx"].nunique()))
    if len(cases) == 0:
        raise ValueError(f"{dataset.path}: the {cfg.split} split has no cases to evaluate")
    log.info("offline A/B: %d %s cases of %d users", len(cases), cfg.split, cases["user_idx"].nunique())
    # A catalog smaller than k_max is exported with K = n_items (its whole catalog): rank that deep.
    k = min([cfg.k_max, dataset.n_items] + [r.k for r in (control, treatment) if r.k is not None])
    # every item the user consumed before the case is excluded, not only the last max_len the graphs read
    exclude = dataset.consumed_before(cases)
    top_c = rank_cases(control, hist, k, cfg.batch_size, desc="control", exclude=exclude, events=arm_events(dataset, cases, hist, control))
    top_t = rank_cases(treatment, hist, k, cfg.batch_size, desc="treatment", exclude=exclude,
                       events=arm_events(dataset, cases, hist, treatment))
    res = offline_from_topk(cases, top_c, top_t, dataset.n_items, cfg, item_counts=dataset.train_counts)
    res.events = events
    return res


def offline_from_topk(cases: pd.DataFrame, top_c: np.ndarray, top_t: np.ndarray, n_items: int, cfg: ABConfig,
                      item_counts: np.ndarray | None = None) -> OfflineResult:
    """The offline comparison from both arms' top-K lists for ``cases`` (needs ``user_idx, item_idx, segment``).

    ``item_counts`` (train events per item_idx, [n_items + 1]): coverage is also split by train-count band.
    """
    targets = cases["item_idx"].to_numpy(np.int64)
    ks = cfg.metric_ks()
    _, mc = topk_metrics(top_c, targets, ks)
    _, mt = topk_metrics(top_t, targets, ks)
    cols = {"case_id": cases["case_id"].to_numpy() if "case_id" in cases else np.arange(len(cases)),
            "user_idx": cases["user_idx"].to_numpy(), "segment": cases["segment"].astype(str).to_numpy(), "target": targets}
    for name in sorted(set(cfg.metrics) | {cfg.cold_recall_metric}):
        cols[f"{name}_control"] = mc[name]
        cols[f"{name}_treatment"] = mt[name]
    per_case = pd.DataFrame(cols)
    comps = compare_per_case(per_case, cfg)
    coverage = {
        "control": item_coverage(top_c, n_items, cfg.coverage_k),
        "treatment": item_coverage(top_t, n_items, cfg.coverage_k),
    }
    res = OfflineResult(comps, coverage, per_case, top_c, top_t)
    if item_counts is not None:
        res.coverage_bands = {arm: coverage_by_count(top, item_counts, cfg.coverage_k) for arm, top in (("control", top_c), ("treatment", top_t))}
    res.primary = res.get(cfg.primary_metric, cfg.primary_segment)
    return res


def cold_blind_warning(offline: OfflineResult, cfg: ABConfig) -> str | None:
    """A warning when the decision reads the ``overall`` segment and the control finds no cold target at all.

    An ID-only control cannot score items training never saw, so on every cold case it scores 0 and an overall
    lift partly measures that, not ranking skill (e.g. MovieLens: 93% of the test cases are cold). None otherwise.
    """
    if cfg.primary_segment != "overall":
        return None
    cold = (offline.per_case["segment"] == "cold").to_numpy()
    col = f"{cfg.cold_recall_metric}_control"
    if not cold.any() or col not in offline.per_case or offline.per_case.loc[cold, col].sum() > 0:
        return None
    return (f"the control finds none of the {int(cold.sum())} cold targets ({cold.mean():.0%} of the cases; {cfg.cold_recall_metric} 0): "
            f"the overall {cfg.primary_metric} lift measures that as much as ranking skill. When the control cannot score new "
            "items (an ID-only model), decide on warm items (ab.primary_segment: warm); the guardrails still read every case.")
