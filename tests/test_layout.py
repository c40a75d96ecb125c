"""The package's layout rules, checked on its source with ``ast`` (nothing is imported): at most 16 modules
directly in ``densenet_demo/``, no module over 400 lines, no function over 100 lines (a ``build_*`` function of
the UI: 150), no import cycle (imports inside functions count), and gradio imported only under ``densenet_demo/ui/``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "densenet_demo"
MAX_TOP_MODULES = 16
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 100
MAX_UI_BUILD_LINES = 150


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (functions and TYPE_CHECKING too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                full = f"{base_name}.{alias.name}"
                names.add(full if full in modules else base_name)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name in modules and name != module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the modules along it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_at_most_16_modules_sit_directly_in_the_package():
    top = [path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)


def test_no_module_is_over_400_lines():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_100_lines_and_no_page_builder_over_150():
    long = []
    for name, path in _modules().items():
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = fn.end_lineno - fn.lineno + 1
            builder = name.startswith("densenet_demo.ui.") and fn.name.startswith("build_")
            if lines > (MAX_UI_BUILD_LINES if builder else MAX_FUNCTION_LINES):
                long.append(f"{name}.{fn.name}: {lines} lines")
    assert long == []


def test_no_import_cycle_in_the_package_function_level_imports_included():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_gradio_is_imported_only_under_the_ui():
    outside = []
    for name, path in _modules().items():
        if name.startswith("densenet_demo.ui"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            imported += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "gradio" or n.startswith(("gradio.", "gradio_client")) for n in imported):
                outside.append(name)
    assert outside == []


def test_the_architecture_page_names_every_module_of_the_package():
    # docs/architecture.md is the map of the rooms: a module it does not name is a room a reader cannot find.
    # The command line's modules are its commands (one per command, listed in docs/cli.md).
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rooms = doc.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py", rooms))  # int8.py too
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" and p.parent.name != "cli"}
    assert len(modules) > 50 and sorted(modules - named) == []
