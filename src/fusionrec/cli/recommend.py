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
                                            "sequential model answers instead, unless --mix."),
        mix: bool = typer.Option(False, "--mix", help="With --query and a history shorter than --mix-until events: merge the "
                                 "query's list and the sequential model's by reciprocal-rank fusion (score = sum of "
                                 "w/(1 + rank); the query's w falls linearly from 1 with no history to 0 at --mix-until "
                                 "events, the sequence's is 1 - w); history items are never returned."),
        mix_until: int = typer.Option(3, "--mix-until", min=1, help="History length (events) from which --mix leaves the "
                                      "answer to the sequential model alone."),
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
            mixing = query is not None and mix and 0 < len(history) < mix_until
            if mix and query is None:
                raise ValueError("--mix merges a --query with the history: give --query")
            if mixing and explain:
                raise ValueError("--explain explains the sequential model's own list; a --mix answer also holds the "
                                 "query's items: drop one of the two")
            explanations = None
            try:
                with RecommendClient(url, model=model, repo=repo, timeout_s=timeout_s) as client:
                    if client.item_ids is None:
                        raise ValueError("--repo MODEL_REPO is needed to map item ids")
                    if query is not None and (mixing or not history):
                        recs = client.query(query, k=k, history=history, mix=mixing, mix_until=mix_until)
                    elif explain and history:
                        h = left_pad([client.to_idx(history)], client.max_len or len(history))
                        client.to_kinds([history], None if kinds is None else [kinds])  # same checks as an unexplained call
                        idx, score, explanations = client.topk(h, k, explain=True)
                        recs = client.to_ids(idx[0], score[0])
                    else:  # the client's own call: the model reads the last max_len items, EVERY history item is excluded
                        recs = client.recommend(history, k, events=kinds)
            except InferenceServerException as exc:
                raise ValueError(f"Triton at {url}: {exc.message() if hasattr(exc, 'message') else exc}") from None
            if kinds is not None and not client.event_kinds:
                typer.echo("(the model reads no behaviour kinds: --events is not used)", err=True)
            if query is not None and not history:
                typer.echo(f"(no history: ranked by content for the query {query!r})", err=True)
            elif mixing:
                from fusionrec.query import query_weight

                w = query_weight(len(history), mix_until)
                typer.echo(f"({len(history)} event(s) < --mix-until {mix_until}: the query's list (weight {w:.2f}) and the "
                           f"sequential model's (weight {1 - w:.2f}) merged by reciprocal-rank fusion; scores are fusion scores)",
                           err=True)
            elif query is not None:
                typer.echo("(a history was given: the sequential model answers, the query is not used"
                           + (f"; {len(history)} event(s) >= --mix-until {mix_until})" if mix else ")"), err=True)
            elif not history:
                typer.echo("(empty history: popularity fallback" + ("; nothing to explain)" if explain else ")"), err=True)
            if explanations is not None and explanations[0] is not None:
                from fusionrec.explain import format_explanation

                for rank, e in enumerate(explanations[0], 1):
                    typer.echo(f"{rank:>3}  " + format_explanation(e, client.item_ids).replace("\n", "\n     "))
                return
            for rank, (item, score) in enumerate(recs, 1):
                typer.echo(f"{rank:>3}  {item}  {score:.4f}")
