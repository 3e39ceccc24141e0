"""The import graph of src/fusionrec: no upward edges between layers, no cycles between modules.

The layers are the ones docs/ARCHITECTURE.md draws (lowest first). An import may only point to
its own layer or a lower one; function-level imports count too, so a lazy import cannot hide an
upward edge. Within a layer, module-level imports must form no cycle. Read by ``ast`` (no
import is executed), so the test is fast and sees every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("fusionrec", "fusionrec.progress", "fusionrec.device", "fusionrec.config", "fusionrec.artifacts",
     "fusionrec.ranking", "fusionrec.metrics"),                                   # shared helpers, the TopKRanker protocol
    ("fusionrec.data", "fusionrec.model_repository"),                              # the artifact owners
    ("fusionrec.encoders",),                                                       # encode step and encoders
    ("fusionrec.models",),                                                         # model definitions, align step
    ("fusionrec.evaluate",),                                                       # full-ranking evaluation
    ("fusionrec.train", "fusionrec.export", "fusionrec.promote", "fusionrec.ab"),  # the other steps
    ("fusionrec.serving",),                                                        # Triton server, gRPC client, online replay
    ("fusionrec.components",),                                                     # KFP components
    ("fusionrec.pipelines",),                                                      # the KFP pipeline and its runners
    ("fusionrec.cli",),                                                            # the command line
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, layer = len(name), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)"
    return layer


def _edges() -> list[tuple[str, str, bool, int]]:
    """(importer, imported, module_level, line) for every fusionrec import in src/fusionrec."""
    out = []
    for path in sorted((SRC / "fusionrec").rglob("*.py")):
        mod = _module_name(path)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        pkg = package.split(".")
                        pkg = pkg[: len(pkg) - (child.level - 1)]
                        base = ".".join(pkg) + (f".{base}" if base else "")
                    names = [base]
                    if base == "fusionrec" or child.level and not child.module:
                        names += [f"{base}.{a.name}" for a in child.names]  # "from fusionrec import export"
                elif isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))
                    continue
                for name in names:
                    if name == "fusionrec" or name.startswith("fusionrec."):
                        out.append((mod, name, not in_function, child.lineno))

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


def _existing(name: str, modules: set[str]) -> str:
    """``from fusionrec import export`` names a module; ``from fusionrec import __version__`` the package."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_no_import_points_to_a_higher_layer():
    edges = _edges()
    modules = {m for m, *_ in edges} | {_module_name(p) for p in (SRC / "fusionrec").rglob("*.py")}
    upward = []
    for src, dst, _, line in edges:
        dst = _existing(dst, modules)
        if _layer(dst) > _layer(src):
            upward.append(f"{src}:{line} imports {dst} (layer {_layer(dst)} > {_layer(src)})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_cycle_between_modules():
    edges = _edges()
    modules = {_module_name(p) for p in (SRC / "fusionrec").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for src, dst, module_level, _ in edges:
        dst = _existing(dst, modules)
        if module_level and dst != src and not src.startswith(dst + "."):  # a package's own __init__ is no cycle
            graph[src].add(dst)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_layer_check_sees_upward_and_lazy_imports():
    """The checker itself: a function-level import of a higher layer is found (so the test can fail)."""
    assert _layer("fusionrec.models.recommender") < _layer("fusionrec.evaluate") < _layer("fusionrec.train")
    assert _layer("fusionrec.serving.client") > _layer("fusionrec.ab.offline")
    edges = _edges()
    assert any(src.startswith("fusionrec.cli") and not module_level for src, _, module_level, _ in edges)
