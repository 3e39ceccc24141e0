"""CLI command: ``fusionrec serve`` (exported models on a local Triton server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fusionrec.cli.common import user_errors


def _named_repositories(args: list[str]) -> "list[Path] | dict[str, Path]":
    """``serve``'s arguments: plain repository paths, or NAME=PATH pairs (a path that exists wins)."""
    named: dict[str, Path] = {}
    plain: list[Path] = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if sep and name and not Path(arg).exists():
            if name in named:
                raise ValueError(f"the name '{name}' is given twice")
            named[name] = Path(path)
        else:
            plain.append(Path(arg))
    if named and plain:
        raise ValueError("name every repository (NAME=PATH) or none")
    for p in [*plain, *named.values()]:
        if not p.exists():
            raise FileNotFoundError(f"model repository not found: {p}")
    return named or plain


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        repos: list[str] = typer.Argument(..., help="Model repository folder(s) from `fusionrec export`; every model in them is served "
                                          "under its own name, or NAME=PATH to serve PATH's model as NAME (two repositories whose "
                                          "models share a name: control=repo_a treatment=repo_b)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
        grpc_port: int = typer.Option(8001, "--grpc-port"),
        http_port: int = typer.Option(8000, "--http-port"),
        metrics_port: int = typer.Option(8002, "--metrics-port"),
        max_queue_delay_us: Optional[int] = typer.Option(None, "--max-queue-delay-us", help="Override config.pbtxt's dynamic batching delay."),
        instances: int = typer.Option(1, "--instances", help="Model instances (onnxruntime sessions) per model."),
        no_batching: bool = typer.Option(False, "--no-dynamic-batching", help="Serve every request alone (for comparisons)."),
        log_file: Optional[Path] = typer.Option(None, "--log-file", help="Where Triton's own log goes "
                                                "(default: $FUSIONREC_CACHE/logs/triton-<grpc port>.log, ~/.cache/fusionrec without it)."),
    ) -> None:
        """Serve exported models on a local Triton server (nvidia-pytriton) until SIGINT/SIGTERM."""
        with user_errors():
            from fusionrec.encoders.image import cache_root
            from fusionrec.serving.server import serve_forever, start_server, stop_requested

            models = _named_repositories(repos)
            log_file = log_file or cache_root() / "logs" / f"triton-{grpc_port}.log"
            typer.echo(f"Triton's own log: {log_file}", err=True)
            with stop_requested() as stop:  # before the start: a signal during start-up stops Triton too
                handle = start_server(models, host=host, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                                      max_queue_delay_us=max_queue_delay_us, instances=instances,
                                      dynamic_batching=not no_batching, log_file=log_file)
                for m in handle.models.values():
                    typer.echo(f"serving '{m.name}' (L={m.max_len}, K={m.k}, max batch {m.max_batch_size}, "
                               f"queue delay {m.max_queue_delay_us} us, {m.provider}) on grpc {handle.grpc_url}", err=True)
                typer.echo(f"ready: grpc {handle.grpc_url} http {handle.http_url} metrics {host}:{metrics_port}", err=True)
                serve_forever(handle, stop)
