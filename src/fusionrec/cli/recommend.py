"""CLI command: ``fusionrec recommend`` (top-K from a served model over gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("recommend")
    def recommend(
        user_history: str = typer.Option("", "--user-history", help="Comma-separated item ids, most recent last (empty: cold user)."),
        k: int = typer.Option(10, "-k", "--k"),
        url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
        model: str = typer.Option("fusionrec", "--model", help="Served model name."),
        repo: Optional[Path] = typer.Option(None, "--repo", help="Model repository (item id map + popularity fallback)."),
        timeout_s: float = typer.Option(10.0, "--timeout", help="Per-call deadline in seconds."),
    ) -> None:
        """Ask a served model for top-K recommendations over gRPC and print them."""
        with user_errors(TimeoutError):
            from tritonclient.utils import InferenceServerException

            from fusionrec.serving.client import RecommendClient

            history = [x.strip() for x in user_history.split(",") if x.strip()]
            try:
                with RecommendClient(url, model=model, repo=repo, timeout_s=timeout_s) as client:
                    if client.item_ids is None:
                        raise ValueError("--repo MODEL_REPO is needed to map item ids")
                    recs = client.recommend(history, k=k)
            except InferenceServerException as exc:
                raise ValueError(f"Triton at {url}: {exc.message() if hasattr(exc, 'message') else exc}") from None
            if not history:
                typer.echo("(empty history: popularity fallback)", err=True)
            for rank, (item, score) in enumerate(recs, 1):
                typer.echo(f"{rank:>3}  {item}  {score:.4f}")
