"""CLI commands: ``fusionrec align``, ``fusionrec train``, ``fusionrec evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fusionrec.cli.common import ConfigOption, SetOption, step_config, user_errors


def _print_summary(name: str, summary: dict, ks=(10, 20)) -> None:
    from fusionrec.evaluate import summary_table

    typer.echo(summary_table({name: summary}, ks=ks))


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
            _print_summary(cfg.model if cfg.model in ("id", "popularity") else f"{cfg.model}/{cfg.fusion}", m["test"])

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
            _print_summary(model.name, m["summary"], ks=[k for k in cfg.ks if k <= 20] or cfg.ks[:1])
