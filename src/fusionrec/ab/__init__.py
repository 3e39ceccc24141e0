"""The ``ab`` step: offline paired tests, an optional online replay, the decision and the report.

:func:`run` is the one entry point (the CLI, the KFP component and the benchmarks call it):
load both arms, compare them offline in-process (``fusionrec.ab.offline``), run the online
replay when one is given, decide (``fusionrec.ab.decision``) and write the ``ab_report``
artifact (``fusionrec.ab.report``). No Triton imports here: the replay over a real Triton server
is a callable the serving package supplies (``fusionrec.serving.ab_online.replay_on_triton``).

Example:
    >>> from fusionrec.ab import ABConfig, run
    >>> run("artifacts/repo_id", "artifacts/repo_fused", "artifacts/dataset", "artifacts/ab", ABConfig())  # doctest: +SKIP
    >>> from fusionrec.serving.ab_online import replay_on_triton                                          # doctest: +SKIP
    >>> run("artifacts/repo_id", "artifacts/repo_fused", "artifacts/dataset", "artifacts/ab", online=replay_on_triton)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from fusionrec.ab.config import ABConfig
from fusionrec.ab.offline import cold_blind_warning, load_ranker, offline_compare
from fusionrec.ab.online import OnlineReplay
from fusionrec.ab.report import arm_names, identical_arms, write_report
from fusionrec.artifacts import check_output
from fusionrec.data.dataset import DatasetArtifact
from fusionrec.model_repository import is_model_repository
from fusionrec.ranking import TopKRanker

__all__ = ["ABConfig", "OnlineReplay", "run"]


def run(
    control: str | os.PathLike | TopKRanker,
    treatment: str | os.PathLike | TopKRanker,
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    cfg: ABConfig | None = None,
    online: OnlineReplay | None = None,
    force: bool = False,
) -> Path:
    """Compare ``treatment`` with ``control`` on ``dataset``, decide, and write the ``ab_report`` at ``out``.

    ``control``/``treatment`` are model repositories (``fusionrec export``), model artifacts, or
    TopKRanker objects (already in the dataset's item_idx space). ``online`` replays the held-out
    cases against both arms served somewhere, e.g. ``fusionrec.serving.ab_online.replay_on_triton``;
    it needs both arms as model repositories. None: offline only (the report says the online part
    was not run).
    """
    cfg = cfg or ABConfig()
    check_output(out, "ab_report", [a for a in (control, treatment, dataset) if isinstance(a, (str, os.PathLike))], force)
    ds = DatasetArtifact(dataset)
    if online is not None:
        for role, arm in (("control", control), ("treatment", treatment)):
            if not isinstance(arm, (str, os.PathLike)) or not is_model_repository(arm):
                raise ValueError(f"{role} {arm} is not a model repository (no <name>/1/model.onnx): the online replay serves "
                                 "exported models; run `fusionrec export` first, or evaluate offline only (--no-online)")
    rankers, inputs = {}, {"dataset": dataset}
    for role, arm in (("control", control), ("treatment", treatment)):
        if isinstance(arm, (str, os.PathLike)):
            rankers[role] = load_ranker(arm, ds)
            inputs[role] = arm
        else:
            rankers[role] = arm
    offline = offline_compare(rankers["control"], rankers["treatment"], ds, cfg, leave_replay_part=online is not None)
    online_res = online(Path(control), Path(treatment), ds, cfg) if online is not None else None
    warnings = [w for w in (identical_arms(control, treatment, offline), cold_blind_warning(offline, cfg)) if w]
    return write_report(out, offline, online_res, cfg, arm_names(control, treatment), inputs, force, warnings,
                        examples=_explained(treatment, ds))


def _explained(treatment, ds: DatasetArtifact) -> tuple[str, str] | None:
    """(markdown, html) of three explained test cases when the treatment repository serves explanations."""
    if not isinstance(treatment, (str, os.PathLike)) or not is_model_repository(treatment):
        return None
    from fusionrec.explain import examples_html, examples_markdown, explained_examples

    examples = explained_examples(treatment, ds)
    if not examples:
        return None
    ids = [str(x) for x in ds.item_ids.tolist()]
    titles = dict(zip(ds.items["item_id"].astype(str), ds.items["title"].fillna("").astype(str))) if "title" in ds.items else {}
    return examples_markdown(examples, ids, titles), examples_html(examples, ds, ids)
