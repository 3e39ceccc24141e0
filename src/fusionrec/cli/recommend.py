"""CLI command: ``fusionrec recommend`` (top-K from a served model over gRPC; explained, or for a text query)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("recommend")
    def recommend(
        user_history: str = typer.Option("", "--user-history", help="Comma-separated item ids, most recent last (empty: cold user)."),
        query: Optional[str] = typer.Option(None, "--query", "-q", help="A new user's words (e.g. \"slow acoustic evening podcasts\"): "
                                            "items are ranked by their content (served <model>_query); with a history the "
                                            "sequential model answers instead."),
        explain: bool = typer.Option(False, "--explain", help="Explain each recommendation (served <model>_explain): modality "
                                     "shares of the score and the history items that drove it."),
        events: str = typer.Option("", "--events", help="Comma-separated behaviour kinds, one per history item (e.g. "
                                   "view,purchase), for a model trained with use_events (sent as EVENTS)."),
        k: int = typer.Option(10, "-k", "--k", min=1, help="Number of recommendations (at least 1)."),
        url: str = typer.Option("127.0.0.1:8001", "--url", help="Triton gRPC address."),
        model: str = typer.Option("fusionrec", "--model", help="Served model name."),
        repo: Optional[Path] = typer.Option(None, "--repo", help="Model repository (item id map + popularity fallback)."),
        timeout_s: float = typer.Option(10.0, "--timeout", help="Per-call deadline in seconds."),
    ) -> None:
        """Ask a served model for top-K recommendations over gRPC and print them (optionally explained, or for a text query)."""
        with user_errors(TimeoutError):
            from tritonclient.utils import InferenceServerException

            from fusionrec.ranking import left_pad
            from fusionrec.serving.client import RecommendClient

            history = [x.strip() for x in user_history.split(",") if x.strip()]
            kinds = [x.strip() for x in events.split(",") if x.strip()] or None
            explanations = None
            try:
                with RecommendClient(url, model=model, repo=repo, timeout_s=timeout_s) as client:
                    if client.item_ids is None:
                        raise ValueError("--repo MODEL_REPO is needed to map item ids")
                    if query is not None and not history:
                        recs = client.query(query, k=k)
                    else:
                        length = client.max_len or max(1, len(history))
                        h = left_pad([client.to_idx(history)], length)
                        ids = client.to_kinds([history], None if kinds is None else [kinds])
                        if explain and history:
                            idx, score, explanations = client.topk(h, k, explain=True)
                        else:
                            idx, score = client.topk(h, k, events=None if ids is None else left_pad(ids, length))
                        recs = client.to_ids(idx[0], score[0])
            except InferenceServerException as exc:
                raise ValueError(f"Triton at {url}: {exc.message() if hasattr(exc, 'message') else exc}") from None
            if kinds is not None and not client.event_kinds:
                typer.echo("(the model reads no behaviour kinds: --events is not used)", err=True)
            if query is not None and not history:
                typer.echo(f"(no history: ranked by content for the query {query!r})", err=True)
            elif query is not None:
                typer.echo("(a history was given: the sequential model answers, the query is not used)", err=True)
            elif not history:
                typer.echo("(empty history: popularity fallback" + ("; nothing to explain)" if explain else ")"), err=True)
            if explanations is not None and explanations[0] is not None:
                from fusionrec.explain import format_explanation

                for rank, e in enumerate(explanations[0], 1):
                    typer.echo(f"{rank:>3}  " + format_explanation(e, client.item_ids).replace("\n", "\n     "))
                return
            for rank, (item, score) in enumerate(recs, 1):
                typer.echo(f"{rank:>3}  {item}  {score:.4f}")
