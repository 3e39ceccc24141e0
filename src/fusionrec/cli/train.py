"""CLI command: ``fusionrec train`` (train a model or a baseline, write the model artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, print_summary, step_config, user_errors


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        dataset: Path = typer.Argument(..., help="dataset artifact folder", exists=True, file_okay=False),
        out: Path = typer.Argument(..., help="output model artifact folder"),
        aligned: Optional[Path] = typer.Option(None, "--aligned", "-a", help="aligned artifact (from `fusionrec align`); needed by fused and single:<modality>", exists=True, file_okay=False),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="fused, id, single:<modality> or popularity"),
        fusion: Optional[str] = typer.Option(None, "--fusion", "-f", help="concat, weighted, attention or user_gate"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="maximum epochs (early stopping on valid NDCG@10)"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
        lr: Optional[float] = typer.Option(None, "--lr"),
        dim: Optional[int] = typer.Option(None, "--dim"),
        loss: Optional[str] = typer.Option(None, "--loss", help="full or sampled softmax"),
        seed: Optional[int] = typer.Option(None, "--seed"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda[:i]"),
        amp: Optional[str] = typer.Option(None, "--amp", help="none, bf16 or fp16"),
        config: Optional[Path] = ConfigOption,
        sets: Optional[List[str]] = SetOption,
    ) -> None:
        """Train a recommender (fused multimodal, or a baseline) and evaluate it on the test cases.

        Example: fusionrec train artifacts/dataset artifacts/model --aligned artifacts/aligned --model fused --fusion attention
        """
        with user_errors(RuntimeError):
            from fusionrec.artifacts import read_json
            from fusionrec.train import TrainConfig, run

            flags = {"model": model, "fusion": fusion, "epochs": epochs, "batch_size": batch_size, "lr": lr, "dim": dim,
                     "loss": loss, "seed": seed, "device": device, "amp": amp}
            cfg = step_config(TrainConfig, config, "train", flags, sets)
            path = run(dataset, aligned, out, cfg)
            m = read_json(path / "metrics.json")
            tr = m["training"]
            typer.echo(f"model artifact -> {path}")
            if tr.get("sequences_per_second"):
                typer.echo(f"training: {tr['epochs_run']} epochs, {tr['train_seconds']:.1f}s, {tr['sequences_per_second']:.0f} sequences/s, "
                           f"best valid NDCG@10 {tr.get('best_valid_ndcg10') or float('nan'):.4f}")
            print_summary(cfg.model if cfg.model in ("id", "popularity") else f"{cfg.model}/{cfg.fusion}", m["test"])
