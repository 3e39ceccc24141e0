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
from fusionrec.ab.offline import load_ranker, offline_compare
from fusionrec.ab.online import OnlineReplay
from fusionrec.ab.report import write_report
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
) -> Path:
    """Compare ``treatment`` with ``control`` on ``dataset``, decide, and write the ``ab_report`` at ``out``.

    ``control``/``treatment`` are model repositories (``fusionrec export``), model artifacts, or
    TopKRanker objects (already in the dataset's item_idx space). ``online`` replays the held-out
    cases against both arms served somewhere, e.g. ``fusionrec.serving.ab_online.replay_on_triton``;
    it needs both arms as model repositories. None: offline only (the report says the online part
    was not run).
    """
    cfg = cfg or ABConfig()
    ds = DatasetArtifact(dataset)
    if online is not None:
        for role, arm in (("control", control), ("treatment", treatment)):
            if not isinstance(arm, (str, os.PathLike)) or not is_model_repository(arm):
                raise ValueError(f"{role} {arm} is not a model repository (no <name>/1/model.onnx): the online replay serves "
                                 "exported models; run `fusionrec export` first, or evaluate offline only (--no-online)")
    rankers, names, inputs = {}, {}, {"dataset": dataset}
    for role, arm in (("control", control), ("treatment", treatment)):
        if isinstance(arm, (str, os.PathLike)):
            rankers[role] = load_ranker(arm, ds)
            names[role] = Path(arm).name
            inputs[role] = arm
        else:
            rankers[role] = arm
            names[role] = type(arm).__name__
    offline = offline_compare(rankers["control"], rankers["treatment"], ds, cfg, leave_replay_part=online is not None)
    online_res = online(Path(control), Path(treatment), ds, cfg) if online is not None else None
    return write_report(out, offline, online_res, cfg, names, inputs)
