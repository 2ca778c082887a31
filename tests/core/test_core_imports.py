"""slimkit.core imports no ML framework: the CLI's --help stays fast and the layers stay apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"
HEAVY = ("torch", "onnx", "onnxruntime", "mlflow", "hydra", "omegaconf")


def test_importing_core_imports_no_framework() -> None:
    code = (
        "import sys, slimkit.core, slimkit.core.plugins, slimkit.core.run, slimkit.core.files; "
        f"heavy = {HEAVY!r}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Modules imported when the module is executed: module body, if/try/with blocks, not functions
    or classes' methods, and not ``if TYPE_CHECKING:`` blocks."""
    found: list[tuple[str, int]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    found.append((node.module, node.lineno))
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With):
                visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit([n for n in node.body if not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)])

    visit(tree.body)
    return found


def test_top_level_imports_finds_what_it_should() -> None:
    tree = ast.parse(
        "import torch\n"
        "from onnx import helper\n"
        "if TYPE_CHECKING:\n    import mlflow\n"
        "try:\n    import onnxruntime\nexcept ImportError:\n    pass\n"
        "def f():\n    import hydra\n"
    )
    assert [m for m, _ in top_level_imports(tree)] == ["torch", "onnx", "onnxruntime"]


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_framework_at_top_level(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = [(m, line) for m, line in top_level_imports(tree) if m.split(".")[0] in HEAVY]
    assert bad == [], f"{path.name} imports {bad} at top level; import them inside functions"
