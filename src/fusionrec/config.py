"""Layered configuration: CLI flags > config file > defaults.

Each step declares its settings as a pydantic model (``IngestConfig``, ``EncodeConfig``...).
A config file (YAML, TOML or JSON) holds one section per step, named by the step::

    ingest:
      cold_item_share: 0.1
    train:
      fusion: attention
      epochs: 20

Example (``configs/demo.yaml`` is a complete, documented file):
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "run.yaml"
    >>> _ = path.write_text("train: {fusion: attention, epochs: 20}")
    >>> from fusionrec.train import TrainConfig
    >>> cfg = load_config(TrainConfig, path, section="train", overrides={"epochs": 3})
    >>> cfg.fusion, cfg.epochs, cfg.dim          # the file, the override, a default
    ('attention', 3, 64)
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, section and field."""


class StepConfig(BaseModel):
    """Base class of every step's settings: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format '{path.suffix}' (use .yaml, .toml or .json)")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of step sections")
    return data


def load_config(
    cls: type[T],
    config_file: str | os.PathLike | None = None,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from defaults, then the file's ``section``, then ``overrides``.

    ``None`` values in ``overrides`` mean "not given on the command line" and are skipped.
    """
    values: dict[str, Any] = {}
    where = "defaults"
    if config_file is not None:
        data = read_config_file(config_file)
        where = f"{config_file}"
        if section is not None:
            data = data.get(section) or {}
            where = f"{config_file} [{section}]"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: section must be a mapping")
        values.update(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid {cls.__name__} (from {where} and command-line flags):\n  " + "\n  ".join(lines)) from None


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values as YAML scalars/lists) into a dict."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"expected key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out
