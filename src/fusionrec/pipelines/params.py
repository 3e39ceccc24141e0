"""Pipeline parameters from a config file and ``--param key=value`` pairs, checked against the pipeline.

A config file's ``pipeline`` section holds pipeline parameters and each step section
(``ingest``, ``encode``, ``align``, ``train``, ``export``, ``ab``) becomes that step's
``<step>_config`` parameter; ``key=value`` pairs (YAML values) win over the file.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from fusionrec.config import parse_overrides, read_config_file
from fusionrec.pipelines.fusionrec_pipeline import fusionrec_pipeline

#: config-file sections that map to ``<section>_config`` pipeline parameters.
STEP_SECTIONS = ("ingest", "encode", "align", "train", "export", "ab")


class PipelineError(ValueError):
    """A pipeline parameter, host or local run problem, reported as one line."""


def pipeline_parameters() -> dict[str, Any]:
    """The pipeline's parameters and their defaults (from the pipeline function's signature)."""
    sig = inspect.signature(fusionrec_pipeline.pipeline_func)
    return {name: p.default for name, p in sig.parameters.items()}


def resolve_parameters(params: list[str] | None, config: Path | None = None) -> dict[str, Any]:
    """Pipeline arguments from a config file and ``key=value`` pairs, checked against the pipeline."""
    known = pipeline_parameters()
    args: dict[str, Any] = {}
    if config is not None:
        data = read_config_file(config)
        unknown_sections = sorted(set(data) - {"pipeline", *STEP_SECTIONS, "demo", "evaluate", "serve"})
        if unknown_sections:
            raise PipelineError(f"{config}: unknown section(s) {unknown_sections}; use pipeline, {', '.join(STEP_SECTIONS)}")
        args.update(data.get("pipeline") or {})
        for section in STEP_SECTIONS:
            if data.get(section):
                args[f"{section}_config"] = dict(data[section])
    args.update(parse_overrides(params))
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise PipelineError(f"unknown pipeline parameter(s) {unknown}; the pipeline takes: {', '.join(known)}")
    for name, value in args.items():
        default = known[name]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise PipelineError(f"pipeline parameter {name} must be true/false, got {value!r}")
        if isinstance(default, (list, dict)) and not isinstance(value, type(default)):
            raise PipelineError(f"pipeline parameter {name} must be a {type(default).__name__} (YAML), got {value!r}")
        if isinstance(default, str) and value is not None and not isinstance(value, str):
            args[name] = str(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            args[name] = float(value)
    return args
