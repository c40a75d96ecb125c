"""The suite's own layout: a test file imports helpers (tests/helpers.py), never another test file or conftest.py,
so each test file reads and runs on its own and a shared piece has one home."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, by its first dotted name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # a relative import: from . import x, from .test_x import y
            found.update([node.module.split(".")[0]] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            found.update(arg.value.split(".")[0] for arg in node.args[:1] if isinstance(arg, ast.Constant))
    return found


def _forbidden(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith("test_") or name == "conftest"}


def test_no_test_file_imports_another_test_file_or_conftest():
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) > 30  # the suite was found
    imports = {path.relative_to(TESTS).as_posix(): sorted(_forbidden(_imported_modules(path))) for path in files}
    assert {name: found for name, found in imports.items() if found} == {}


def test_the_helper_modules_import_no_test_file():
    helpers = [p for p in TESTS.rglob("*.py") if not p.name.startswith("test_") and p.name != "conftest.py"]
    assert TESTS / "helpers.py" in helpers
    imports = {path.relative_to(TESTS).as_posix(): sorted(_forbidden(_imported_modules(path))) for path in helpers}
    assert {name: found for name, found in imports.items() if found} == {}


def test_the_check_sees_imports_at_the_top_inside_functions_and_by_name(tmp_path):
    source = tmp_path / "test_sample.py"
    source.write_text(
        "import os\nfrom test_train import x\n"
        "def f():\n    import conftest\n    from helpers import y\n"
        "importlib.import_module('test_other.sub')\n"
    )
    assert _forbidden(_imported_modules(source)) == {"test_train", "conftest", "test_other"}
