"""The command line: --version, and --help on the root and on every (sub)command."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from fusionrec import __version__
from fusionrec.cli import app

runner = CliRunner()


def _command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd, prefix: list[str]) -> None:
        paths.append(prefix)
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click classes)
            for name, sub in cmd.commands.items():
                walk(sub, prefix + [name])

    walk(root, [])
    return paths


PATHS = _command_paths()


def test_every_step_of_the_pipeline_has_a_command():
    top = {p[0] for p in PATHS if len(p) == 1}
    assert {"demo", "demo-data", "ingest", "encode", "align", "train", "evaluate", "export", "serve",
            "recommend", "ab", "pipeline", "datasets"} <= top


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "fusionrec")
def test_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fusionrec {__version__}"


def test_bad_config_file_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  cold_item_share: lots\n")
    result = runner.invoke(app, ["ingest", str(tmp_path), str(tmp_path / "out"), "--config", str(bad)])
    assert result.exit_code == 2
    assert "cold_item_share" in result.output and "Traceback" not in result.output


def test_a_sigterm_wrapped_by_a_c_extension_import_exits_without_traceback():
    """SIGTERM while ``import onnxruntime`` initialises surfaces as ImportError caused by our SystemExit(143)."""
    from fusionrec.cli import _signal_exit

    try:
        try:
            raise SystemExit(143)
        except SystemExit as stop:
            raise ImportError("initialization failed") from stop
    except ImportError as wrapped:
        assert _signal_exit(wrapped).code == 143
    assert _signal_exit(ValueError("bad value")) is None
    assert _signal_exit(ImportError("no module named x")) is None
