"""``slimkit --help`` and ``slimkit plugins``: what they list, and that help stays light."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

GROUPS = ("pipeline", "model", "data", "technique", "target", "tracking")
HEAVY = ("torch", "onnxruntime", "mlflow", "onnx", "onnxscript", "sklearn", "matplotlib")
BUILTIN_PLUGINS = {
    "torch": {"register_adapters"},
    "digits": {"register_data"},
    "magnitude_prune": {"register_techniques"},
    "finetune": {"register_techniques"},
    "cpu": {"register_targets"},
    "mlflow": {"register_trackers"},
    "terminal": {"run_start", "stage_end", "run_end", "run_failed", "progress"},
}


def _group_options(help_text: str) -> dict[str, str]:
    """{group: the text from its ``group:`` line up to the next group} in the config-groups section."""
    section = help_text.split("Config groups", 1)[1].split("Composed config", 1)[0]
    out: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        m = re.match(r"^([a-z_/]+):(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2)
        elif current is not None:
            out[current] += "\n" + line
    return out


def test_help_lists_config_groups_and_options(run_cli, show, tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert "slimkit" in proc.stdout
    groups = _group_options(proc.stdout)
    for group in GROUPS:
        assert group in groups, f"config group {group!r} missing from --help\n{proc.stdout}"
    options = {g: set(re.findall(r"[A-Za-z0-9_]+", text)) for g, text in groups.items()}
    assert {"default", "prune", "finetune", "none"} <= options["pipeline"]
    assert {"digits_cnn", "digits_resnet", "torch"} <= options["model"]
    assert "digits" in options["data"]
    assert {"magnitude_prune", "finetune"} <= options["technique"]
    assert "cpu" in options["target"]
    assert {"mlflow", "none"} <= options["tracking"]
    # The composed config is shown, with the technique defaults a user can override.
    assert "ratio:" in proc.stdout  # channel_prune, the default pipeline's first stage
    assert not (tmp_path / "outputs").exists(), "--help must not start a run"


def test_help_imports_no_heavy_framework(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from slimkit.pipelines.cli import main\n"
        "try:\n"
        "    rc = main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))\n"
        "print('RESULT ' + json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["rc"] in (0, None)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"


def _plugin_rows(table: str) -> dict[str, dict[str, str]]:
    """Parse rich's box table: {plugin name: {column: cell text, lines joined by newlines}}."""
    header: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in table.splitlines():
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│") and header:
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                current = rows.setdefault(cells[0].split()[0], dict.fromkeys(header, ""))
            assert current is not None, table
            for col, cell in zip(header, cells, strict=True):
                current[col] = f"{current[col]}\n{cell}".strip() if cell else current[col]
    return rows


def test_plugins_lists_builtin_plugins_with_hooks(run_cli, show, tmp_path: Path) -> None:
    proc = run_cli(["plugins"], tmp_path)
    assert proc.returncode == 0, show(proc)
    rows = _plugin_rows(proc.stdout)
    assert set(BUILTIN_PLUGINS) <= set(rows), f"plugins missing from\n{proc.stdout}"
    for name, hooks in BUILTIN_PLUGINS.items():
        listed = set(rows[name]["hooks"].split())
        assert hooks <= listed, f"{name}: hooks {sorted(hooks - listed)} not listed\n{proc.stdout}"
        assert rows[name]["module"].startswith("slimkit.plugins."), rows[name]
        assert rows[name]["version"], rows[name]
    assert "technique magnitude_prune" in rows["magnitude_prune"]["provides"]
    assert "tracker mlflow" in rows["mlflow"]["provides"]
    assert "target cpu" in rows["cpu"]["provides"]


def test_version(run_cli, tmp_path: Path) -> None:
    from slimkit import __version__

    proc = run_cli(["--version"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"slimkit {__version__}"
