"""CLI commands: ``fusionrec ingest`` (a raw dataset folder in the data contract -> a dataset artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        source: Path = typer.Argument(..., help="Raw dataset folder: items.{csv,parquet}, interactions.{csv,parquet}, media files."),
        out: Path = typer.Argument(..., help="Output dataset artifact folder (written atomically; replaced if it exists)."),
        config: Optional[Path] = ConfigOption,
        cold_item_share: Optional[float] = typer.Option(None, "--cold-item-share", help="Share of items held out as cold-start items (default 0.1)."),
        min_user_events: Optional[int] = typer.Option(None, "--min-user-events", help="k-core: drop users with fewer events (default 0 = off)."),
        min_item_events: Optional[int] = typer.Option(None, "--min-item-events", help="k-core: drop events of items with fewer events (default 0 = off)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the cold-start item draw (default 0)."),
        sets: Optional[list[str]] = SetOption,
    ) -> None:
        """Validate a raw dataset and write the dataset artifact (ids, splits, cold-start items, rejects)."""
        with user_errors():
            from fusionrec.data.ingest import IngestConfig, run, summary

            cfg = step_config(
                IngestConfig, config, "ingest",
                {"cold_item_share": cold_item_share, "min_user_events": min_user_events,
                 "min_item_events": min_item_events, "seed": seed},
                sets,
            )
            path = run(source, out, cfg)
            typer.echo(summary(path))
