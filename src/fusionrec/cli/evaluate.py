"""CLI command: ``fusionrec evaluate`` (full-ranking evaluation of a model artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, print_summary, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        dataset: Path = typer.Argument(..., help="dataset artifact folder", exists=True, file_okay=False),
        model: Path = typer.Argument(..., help="model artifact folder (from `fusionrec train`)", exists=True, file_okay=False),
        out: Path = typer.Argument(..., help="output evaluation artifact folder"),
        split: Optional[str] = typer.Option(None, "--split", help="test or valid"),
        k_max: Optional[int] = typer.Option(None, "--k-max", help="length of the ranked lists (MRR is MRR@k_max)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda[:i]"),
        config: Optional[Path] = ConfigOption,
        sets: Optional[List[str]] = SetOption,
    ) -> None:
        """Full-ranking evaluation (history excluded): Recall/NDCG@K, MRR, coverage; overall, warm, cold; per-case values kept.

        Example: fusionrec evaluate artifacts/dataset artifacts/model artifacts/eval
        """
        with user_errors(RuntimeError):
            from fusionrec.artifacts import read_json
            from fusionrec.evaluate import EvalConfig, run

            cfg = step_config(EvalConfig, config, "evaluate", {"split": split, "k_max": k_max, "device": device}, sets)
            path = run(dataset, model, out, cfg)
            m = read_json(path / "metrics.json")
            typer.echo(f"evaluation ({cfg.split}) -> {path}")
            print_summary(model.name, m["summary"], ks=[k for k in cfg.ks if k <= 20] or cfg.ks[:1])
