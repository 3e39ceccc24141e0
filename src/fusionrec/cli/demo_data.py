"""CLI commands: ``fusionrec demo-data`` (write the built-in demo catalog: real media, ground truth) and ``demo-oracle``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("demo-data")
    def demo_data(
        out: Path = typer.Argument(..., help="Folder to write (replaced if it exists).", file_okay=False),
        items: Optional[int] = typer.Option(None, "--items", "-n", help="Number of items (default 2000)."),
        users: Optional[int] = typer.Option(None, "--users", "-u", help="Number of users (default 1000)."),
        events_per_user: Optional[int] = typer.Option(None, "--events-per-user", "-e", help="Mean events per user (default 30)."),
        seed: Optional[int] = typer.Option(None, "--seed", "-s", help="Random seed; the same seed gives the same bytes (default 0)."),
        config: Optional[Path] = ConfigOption,
        sets: Optional[list[str]] = SetOption,
    ) -> None:
        """Generate the built-in demo catalog: items.csv, interactions.csv, PNG covers, WAV previews, truth/.

        Each modality reveals one latent attribute of an item (text: genre, image: style, audio: mood, price: tier); users' sequences follow preferences over all of them, so only a model that fuses modalities can do well. A few items get a missing or corrupt modality on purpose (listed in truth/corrupt.json). Config file section: demo.

        Example: fusionrec demo-data data/demo --items 500 --users 300 --seed 1
        """
        with user_errors():
            from fusionrec.data.demo import DemoConfig, generate, read_summary

            cfg = step_config(DemoConfig, config, "demo", {"n_items": items, "n_users": users, "events_per_user": events_per_user, "seed": seed}, sets)
            path = generate(out, cfg)
            s = read_summary(path)
            typer.echo(f"demo catalog written to {path}")
            typer.echo(f"  items:          {s['items']}")
            typer.echo(f"  users:          {s['users']}")
            typer.echo(f"  interactions:   {s['events']}")
            typer.echo(f"  corrupt media:  {s['corrupt']} items (see {path / 'truth' / 'corrupt.json'})")
            typer.echo(f"  ground truth:   {path / 'truth'}")

    @app.command("demo-oracle")
    def demo_oracle(
        raw: Path = typer.Argument(..., help="Folder written by `fusionrec demo-data` (with truth/).", exists=True, file_okay=False),
        dataset: Path = typer.Argument(..., help="Dataset artifact ingested from RAW.", exists=True, file_okay=False),
        split: str = typer.Option("test", help="Cases to rank: test or valid."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the figures as JSON here.", dir_okay=False),
    ) -> None:
        """Oracle ceiling: rank every item by the generator's true next-item probability and report Recall/NDCG@10/20/50 and MRR, overall / warm / cold.

        Example: fusionrec demo-oracle data/demo artifacts/dataset
        """
        with user_errors():
            from fusionrec.artifacts import atomic_write_json
            from fusionrec.data.demo import oracle_metrics

            figures = oracle_metrics(raw, dataset, split=split)
            names = [k for k in next(iter(figures.values())) if k != "n"]
            typer.echo(f"{'segment':<8} {'cases':>6} " + " ".join(f"{n:>9}" for n in names))
            for seg, m in figures.items():
                typer.echo(f"{seg:<8} {m['n']:>6} " + " ".join(f"{m[n]:>9.4f}" for n in names))
            if out is not None:
                atomic_write_json(out, figures)
                typer.echo(f"written to {out}")
