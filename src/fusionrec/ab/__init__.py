"""A/B evaluation: offline paired tests, online replay logic, interleaving, decision, report.

No Triton imports here: the replay over a real Triton server lives in
``fusionrec.serving.ab_online`` and hands its :class:`~fusionrec.ab.online.OnlineResult` to
:func:`run`.

Example:
    >>> from fusionrec.ab import ABConfig, run
    >>> run("artifacts/repo_id", "artifacts/repo_fused", "artifacts/dataset", "artifacts/ab", ABConfig())  # doctest: +SKIP
"""

from __future__ import annotations

from fusionrec.ab.config import ABConfig

__all__ = ["ABConfig", "run"]


def run(control, treatment, dataset, out, cfg: ABConfig | None = None, online=None, force: bool = False):
    """The ``ab`` step (see :func:`fusionrec.ab.report.run`)."""
    from fusionrec.ab.report import run as _run

    return _run(control, treatment, dataset, out, cfg, online, force)
