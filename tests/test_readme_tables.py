"""The README's quality tables are rendered from the benchmark JSON: none may drift from its stored record."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_benchmark_json():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = (ROOT / "README.md").read_text()
    blocks = readme.count("<!-- table:")
    assert blocks >= 4, "the README's result tables are marked for rendering"
    for name in ("query", "explain"):  # the text-query and explanation figures too (benchmarks/query.py, explain.py)
        assert f"<!-- table:{name} -->" in readme, f"README's {name} figures are rendered from benchmarks/results/{name}.json"
    assert mod.render(readme) == readme, "README.md differs from benchmarks/results/*.json: run benchmarks/readme_tables.py"
