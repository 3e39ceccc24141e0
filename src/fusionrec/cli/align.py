"""CLI command: ``fusionrec align`` (train the alignment heads, write the aligned artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("align")
    def align(
        dataset: Path = typer.Argument(..., help="dataset artifact folder (from `fusionrec ingest`)", exists=True, file_okay=False),
        out: Path = typer.Argument(..., help="output aligned artifact folder"),
        embeddings: List[Path] = typer.Option(..., "--embeddings", "-e", help="embeddings artifact folders (from `fusionrec encode`), one per modality; repeat the flag"),
        dim: Optional[int] = typer.Option(None, "--dim", help="size of the shared space (default 64)"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs of the projection heads"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda[:i]"),
        config: Optional[Path] = ConfigOption,
        sets: Optional[List[str]] = SetOption,
    ) -> None:
        """Align modality embeddings into one space (projection heads, symmetric InfoNCE); prints cross-modal Recall@1/@10 before/after.

        Example: fusionrec align artifacts/dataset artifacts/aligned -e artifacts/emb/text -e artifacts/emb/image
        """
        with user_errors(RuntimeError):
            from fusionrec.artifacts import read_json
            from fusionrec.models.align import AlignConfig, run

            cfg = step_config(AlignConfig, config, "align", {"dim": dim, "epochs": epochs, "device": device}, sets)
            path = run(dataset, list(embeddings), out, cfg)
            m = read_json(path / "metrics.json")
            typer.echo(f"aligned artifact -> {path}")
            typer.echo(f"cross-modal retrieval on {m['retrieval'].get('n_held_out', 0)} items held out of the fit "
                       "(before = untrained heads, after = trained):")
            typer.echo(f"{'pair':<22} {'R@1 before':>10} {'R@1 after':>10} {'R@10 before':>11} {'R@10 after':>10} {'n':>6}")
            for pair, after in m["retrieval"]["after"].items():
                b = m["retrieval"]["before"].get(pair, {})
                typer.echo(f"{pair:<22} {b.get('recall@1', float('nan')):>10.3f} {after['recall@1']:>10.3f} "
                           f"{b.get('recall@10', float('nan')):>11.3f} {after['recall@10']:>10.3f} {after['n']:>6}")
