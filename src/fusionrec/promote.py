"""Promote step: install an A/B-approved model repository at the serving location.

The serving location is the Triton model repository that production serves (a folder: a
mounted volume on a cluster). Promotion copies the treatment's repository there under a
temporary name and renames it into place, so Triton never sees a half-copied model; the model
it replaces is kept beside it as ``<location>.previous`` for a rollback. A ``PROMOTED`` file (JSON)
at the root records what was promoted, from which A/B decision, and what it replaced.

The decision is checked here too: a repository whose A/B report says *reject* is refused,
so the control in production is never overwritten by a model that lost.

Example:
    >>> promote("artifacts/repo_fused", "artifacts/ab_report", "/srv/triton/models")   # doctest: +SKIP
    PosixPath('/srv/triton/models')
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path

from fusionrec.artifacts import ArtifactError, artifact_hash, atomic_write_json, read_json, read_manifest

PROMOTED = "PROMOTED"


class PromotionRefused(ValueError):
    """The A/B decision did not approve this model."""


def promote(repository: str | os.PathLike, ab_report: str | os.PathLike, location: str | os.PathLike) -> Path:
    """Copy ``repository`` to ``location`` atomically with a ``PROMOTED`` manifest; returns ``location``.

    Raises :class:`PromotionRefused` when ``ab_report/decision.json`` does not say promote.
    """
    repository, ab_report, location = Path(repository), Path(ab_report), Path(location)
    read_manifest(repository, kind="model_repository")
    read_manifest(ab_report, kind="ab_report")
    decision_file = ab_report / "decision.json"
    if not decision_file.exists():
        raise ArtifactError(f"{ab_report} has no decision.json")
    decision = read_json(decision_file)
    if not decision.get("promote"):
        raise PromotionRefused(f"the A/B decision in {decision_file} is reject ({decision.get('decided_by', '?')}): "
                               f"{location} is left as it is")
    location.parent.mkdir(parents=True, exist_ok=True)
    previous = location.with_name(location.name + ".previous")
    replaced = None
    if location.exists():
        replaced = (read_json(location / PROMOTED) if (location / PROMOTED).exists() else {}).get("content_hash") \
            or artifact_hash(location)
    tmp = Path(tempfile.mkdtemp(prefix=f".{location.name}.", suffix=".tmp", dir=location.parent))
    try:
        staged = tmp / "repo"
        shutil.copytree(repository, staged)
        atomic_write_json(staged / PROMOTED, {
            "promoted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": str(repository),
            "content_hash": artifact_hash(repository),
            "models": read_manifest(repository).get("models"),
            "decision": {k: decision.get(k) for k in ("promote", "decided_by", "control", "treatment")},
            "ab_report": str(ab_report),
            "replaced": replaced,
        })
        if location.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(location, previous)
        os.replace(staged, location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return location
