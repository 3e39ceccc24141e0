"""Helpers shared by the CLI modules: config loading with flag overrides, clean error exits."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, TypeVar

import typer
from pydantic import BaseModel

from fusionrec.config import ConfigError, load_config, parse_overrides

T = TypeVar("T", bound=BaseModel)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML/TOML/JSON config file; its section for this step is used.", exists=True, dir_okay=False)
SetOption = typer.Option(None, "--set", help="Override a config field: --set key=value (repeatable).")


def step_config(cls: type[T], config: Optional[Path], section: str, flags: dict[str, Any], sets: list[str] | None = None) -> T:
    """CLI flags > --set pairs > config file section > defaults."""
    overrides = parse_overrides(sets)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(cls, config, section=section, overrides=overrides)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn expected errors (bad config, bad input) into one clear line and exit code 2, no traceback."""
    from fusionrec.artifacts import ArtifactError

    try:
        yield
    except (ConfigError, ArtifactError, FileNotFoundError, ValueError, *extra) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(code=130) from None


def print_summary(name: str, summary: dict, ks=(10, 20)) -> None:
    """Print an evaluation summary (``fusionrec.evaluate``) as a Markdown table."""
    from fusionrec.evaluate import summary_table

    typer.echo(summary_table({name: summary}, ks=ks))
