"""The layers of docs/architecture.md, checked on the source: no module imports a higher
layer, and no modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "camkit"

# docs/architecture.md, bottom up: the first path prefix that matches gives a module's layer.
LAYERS = {
    1: ("version", "targets", "heads", "segmentation", "detection", "fusion", "postprocess",
        "progress", "artifacts", "data"),
    2: ("capture",),
    3: ("methods", "dff"),
    4: ("api", "explanation", "classes"),
    5: ("memory", "embedding", "metrics", "zoo"),
    6: ("evaluate", "batch", "viz", "demo", "explorer", "cli"),
}


def module_names() -> dict[str, Path]:
    """``{"camkit.capture.hooks": path}`` for every module of the package."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def layer_of(module: str) -> int | None:
    """The layer of ``camkit.x.y`` (``None`` for the package's public face)."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    for layer, prefixes in LAYERS.items():
        if parts[0] in prefixes:
            return layer
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def imports(module: str) -> set[str]:
    """The camkit modules ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    own = layer_of(module)
    if own is None:
        return
    higher = {m for m in GRAPH[module] if (layer_of(m) or 0) > own}
    assert not higher, f"{module} (layer {own}) imports {sorted(higher)}"


def test_no_modules_import_each_other_in_a_circle():
    def through_faces(module: str) -> set[str]:
        """A package's ``__init__`` that only hands its modules' names on is no stop."""
        return {m for m in GRAPH[module] if not module.startswith(m + ".")}

    circles = []
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in through_faces(module):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
