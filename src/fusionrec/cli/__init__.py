"""The ``fusionrec`` command line: one typer app, one module per command (or command group), named after it.

Each module in this package defines ``register(app)`` adding its commands; a module is
imported only to register, and heavy libraries (torch, transformers, pytriton) are imported
inside the commands so ``fusionrec --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Optional

import typer

from fusionrec import __version__

# Order is the order of the pipeline, which is also the order --help lists them in.
COMMAND_MODULES = ("demo", "demo_data", "ingest", "datasets", "encode", "align", "train", "evaluate", "export", "serve",
                   "recommend", "ab", "pipeline")

app = typer.Typer(
    name="fusionrec",
    help="Multimodal recommender: ingest, encode, align, train, export to ONNX, serve on Triton, A/B-evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fusionrec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """fusionrec: multimodal recommendation with pretrained encoders, Triton serving and KFP pipelines."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"fusionrec.cli.{_name}").register(app)


def _exit_on_sigterm() -> None:
    """SIGTERM (kill, KFP, CI timeouts) becomes a normal exit, so every ``finally`` runs and a
    half-written artifact's temporary folder is removed (Python's default dies on the spot)."""
    import signal

    def _exit(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit)


def _signal_exit(exc: BaseException) -> SystemExit | None:
    """The SystemExit our SIGTERM handler raised, if ``exc`` is only its wrapper.

    A signal that lands while a C extension initialises (``import onnxruntime`` while the server
    starts) comes back as "ImportError: initialization failed" caused by that SystemExit: the user
    asked to stop, so exit with its code and no traceback.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def main() -> None:
    _exit_on_sigterm()
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - only a wrapped signal exit is swallowed, anything else re-raised
        stop = _signal_exit(exc)
        if stop is None:
            raise
        raise SystemExit(stop.code) from None


if __name__ == "__main__":
    main()
