"""The rules that keep the house easy to see, checked on the source (imports anywhere in a module,
lazy ones inside functions included; ``if TYPE_CHECKING:`` blocks excluded):

- ``core/`` imports no plugin and no pipeline, and its modules import each other without a circle;
- no technique imports a target module (a stage asks the run's target through ``ctx.target``);
- no adapter or framework toolkit (``plugins/torch``, ``plugins/onnx``, ``plugins/hf``) and no
  target imports a technique.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["slimkit", *parts])


def imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports anywhere (not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from . import x` / `from .pkg import mod`: x may be a module
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sources(folder):
        hits = sorted(m for m in imports(path) if m.startswith(forbidden))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_imports_resolves_relative_and_lazy_imports(tmp_path: Path) -> None:
    path = ROOT / "core" / "run.py"
    found = imports(path)
    assert "slimkit.core.files" in found  # `from . import files`
    assert "slimkit.core.target" in found  # `from .target import ...`
    assert "os" in found  # imported inside a function


def test_core_imports_no_plugin_and_no_pipeline() -> None:
    assert offenders("core", ("slimkit.plugins", "slimkit.pipelines")) == {}


def test_core_modules_import_each_other_without_a_circle() -> None:
    graph = {
        module_name(p): {m for m in imports(p) if m.startswith("slimkit.core.") and m != module_name(p)}
        for p in sources("core")
    }
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    done: set[str] = set()

    def walk(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import circle in core: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            walk(nxt, [*stack, node])
        done.add(node)

    for node in sorted(graph):
        if node != "slimkit.core":  # the package re-exports everything
            walk(node, [])


def test_no_technique_imports_a_target() -> None:
    assert offenders("plugins/techniques", ("slimkit.plugins.targets",)) == {}


@pytest.mark.parametrize("folder", ["plugins/torch", "plugins/onnx", "plugins/hf", "plugins/targets"])
def test_adapters_toolkits_and_targets_import_no_technique(folder: str) -> None:
    assert offenders(folder, ("slimkit.plugins.techniques",)) == {}


def test_every_technique_has_its_own_folder() -> None:
    singles = sorted(p.name for p in (ROOT / "plugins" / "techniques").glob("*.py") if p.name != "__init__.py")
    assert singles == [], f"techniques outside a folder of their own: {singles}"
