"""Every code block of README.md runs, so what the README shows keeps working.

All blocks run in one temporary folder, in README order, as a reader would run them from the
repository root after ``make demo`` and ``source .venv/bin/activate`` (this interpreter is that
``.venv``'s):

- ``bash`` blocks: each command (``\\``-continued lines joined, comments dropped, leading ``VAR=value``
  assignments as its environment). ``slimkit ...`` runs the CLI with small budgets appended
  (:func:`budget`: fewer timing runs in this process, one pruning step, no training epochs, 100
  samples per split, and the bundled 8×8 ``digits_cnn`` where a command names no model: the same
  pipelines at a fraction of ``digits_resnet``'s cost); ``python ...`` runs this interpreter. A
  command of any other kind must be in :data:`NOT_RUN` with the reason, or
  :func:`test_every_block_is_run_or_listed` fails.
- ``python`` blocks: executed, with ``slimkit.compress`` given the same budgets; a block whose first
  line is ``# NAME.py`` is a file the README asks the reader to write: it is written there (and
  imported), before any block runs.
- Blocks of any other language are listed in :data:`NOT_CODE` by their first line.

The MLflow store is the default, ``./mlflow.db`` in that folder.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slimkit.pipelines.testing import cli_env, describe

README = Path(__file__).resolve().parents[1] / "README.md"

#: Commands not run, with why: set-up (the test runs inside what it made), long runs, servers.
NOT_RUN: dict[str, str] = {
    "make demo": "set-up: creates .venv and runs the full demo (minutes); the test runs in that .venv",
    "make test": "set-up: runs the whole test suite, this file included",
    "source .venv/bin/activate": "set-up: the test runs .venv's interpreter and the slimkit CLI through it",
    "make llm-model": "trains the benchmark's language model (about 15 minutes); a slow test trains a small one",
}

#: Blocks that are not commands or code, by their first line, with what they are.
NOT_CODE: dict[str, str] = {
    "config     conf/                     Hydra groups: pipeline/ model/ data/ technique/ target/ tracking/ "
    "(one file per option)": "a map of the source tree",
}

#: Per technique: stage settings that keep a run short (set only where the stage has the key).
STAGE_BUDGETS: dict[str, dict[str, Any]] = {
    "channel_prune": {"steps": 1, "finetune_epochs": 0},
    "magnitude_prune": {"steps": 1, "finetune_epochs": 0},
    "layer_prune": {"finetune_epochs": 0},
    "distill": {"epochs": 0},
    "finetune": {"epochs": 0},
    "quantize": {"calibration_samples": 32, "latency_repeats": 2, "finish_rounds": 0, "qat_epochs": 0},
    "weight_only": {"eval_samples": 8, "sensitivity_samples": 4, "calibration_samples": 8},
}

#: Target settings that keep the timing short (set only where the target has the key).
TARGET_BUDGET: dict[str, Any] = {
    "repeats": 2,
    "warmup": 1,
    "batch_sizes": "[1]",
    "runtimes": "[onnxruntime]",
    "rounds": 1,
    "isolate": "false",
    "validation_samples": 16,
}

#: The model of a command that names none (``model=``): the default's small sibling.
SMALL_MODEL = "digits_cnn"

#: Per data option: settings that keep it small.
DATA_BUDGETS: dict[str, dict[str, Any]] = {"digits": {"limit": 100}, "text": {"max_length": 32}}

#: Environment of every command: short language-model measurements (slimkit.plugins.llm.measure).
ENV_BUDGET: dict[str, str] = {"SLIMKIT_LLM_BENCH": "prompt=16,new=8,gen=8,prompts=2,rounds=2,repeats=2"}

#: Subcommands and flags of the CLI that run no pipeline (no budget appended).
NO_RUN_ARGS = ("--help", "-h", "plugins", "inspect", "generate", "compare")


@dataclass
class Block:
    """A fenced code block of the README: its language, text and first line number."""

    lang: str
    text: str
    line: int

    @property
    def first(self) -> str:
        return self.text.splitlines()[0] if self.text.strip() else ""

    @property
    def file_name(self) -> str | None:
        """``NAME.py`` for a python block that starts with ``# NAME.py``: a file to write, not to run."""
        m = re.fullmatch(r"#\s*([\w./-]+\.py)\s*", self.first)
        return m.group(1) if self.lang == "python" and m else None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.file_name or self.lang or 'plain'}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """The README's fenced code blocks, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks = []
    for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", text, re.M | re.S):
        blocks.append(Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 2))
    return blocks


def commands(block: Block) -> Iterator[tuple[int, str, list[str]]]:
    """Each command of a bash block: (line number, text without comment, words)."""
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        words = shlex.split(text, comments=True)
        if words:
            yield block.line + start, shlex.join(words), words


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``VAR=value`` words as an environment, and the command."""
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        key, _, value = words[0].partition("=")
        env[key] = value
        words = words[1:]
    return env, words


def budget(args: list[str], objects: tuple[str, ...] = ()) -> list[str]:
    """Overrides that keep the run of ``slimkit ARGS`` short, for the keys ``args`` leaves alone.

    The config is composed from the group choices in ``args`` (``pipeline=``, ``target=``,
    ``technique@...=``), so each stage gets the budget of its technique. ``objects``: the groups
    (``model``, ``data``) given as Python objects to ``slimkit.compress``, left alone too."""
    from slimkit.pipelines.config import compose, to_plain

    if any(a in NO_RUN_ARGS for a in args[:1]) or "--help" in args or "-h" in args:
        return []
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides} | set(objects)
    groups = [a for a in overrides if "." not in a.split("=", 1)[0] or "@" in a.split("=", 1)[0]]
    plain = to_plain(compose(groups))
    wanted: dict[str, Any] = {}
    for name, stage in (plain.get("pipeline", {}).get("stages") or {}).items():
        for key, value in STAGE_BUDGETS.get(stage.get("technique", ""), {}).items():
            if key in stage:
                wanted[f"pipeline.stages.{name}.{key}"] = value
    wanted.update({f"target.{k}": v for k, v in TARGET_BUDGET.items() if k in plain["target"]})
    data = plain.get("data", {})
    if "data" not in given:
        wanted.update({f"data.{k}": v for k, v in DATA_BUDGETS.get(data.get("name"), {}).items() if k in data})
    if "model" not in given:
        wanted["model"] = SMALL_MODEL
    return [f"{k}={v}" for k, v in wanted.items() if k not in given]


def _compress_with_budget(compress: Any) -> Any:
    """``slimkit.compress`` with :func:`budget`'s overrides added for the keys the call leaves alone."""

    def wrapped(model: Any = None, data: Any = None, **kwargs: Any) -> Any:
        args = [f"pipeline={kwargs.get('pipeline', 'default')}", f"target={kwargs.get('target', 'cpu')}"]
        args += [f"{k}={v}" for k, v in (("model", model), ("data", data)) if isinstance(v, str)]
        given = list(kwargs.get("overrides") or [])
        given += [f"{k.replace('__', '.')}=x" for k in kwargs if "__" in k]
        objects = tuple(k for k, v in (("model", model), ("data", data)) if v is not None and not isinstance(v, str))
        kwargs["overrides"] = list(kwargs.get("overrides") or []) + budget([*args, *given], objects)
        return compress(model, data, **kwargs)

    return wrapped


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every block runs in, with the files the README has the reader write."""
    folder = tmp_path_factory.mktemp("readme")
    for block in readme_blocks():
        if block.file_name:
            (folder / block.file_name).write_text(block.text, encoding="utf-8")
    return folder


def unhandled(blocks: list[Block]) -> list[str]:
    """What in ``blocks`` this file would neither run nor skip for a listed reason (and stale list entries)."""
    problems = []
    firsts = {b.first for b in blocks}
    problems += [f"NOT_CODE lists a block no longer in README.md: {f!r}" for f in NOT_CODE if f not in firsts]
    listed: set[str] = set()
    for block in blocks:
        if block.lang == "python":
            continue
        if block.lang != "bash":
            if block.first not in NOT_CODE:
                problems.append(
                    f"README.md:{block.line}: a ```{block.lang} block this test neither runs nor lists; "
                    "make it ```bash or ```python, or add its first line to NOT_CODE with what it is"
                )
            continue
        for line, text, words in commands(block):
            _, cmd = split_env(words)
            if text in NOT_RUN:
                listed.add(text)
            elif not cmd or cmd[0] not in ("slimkit", "python"):
                problems.append(f"README.md:{line}: `{text}` is not a slimkit or python command and not in NOT_RUN")
    problems += [f"NOT_RUN lists a command no longer in README.md: {c!r}" for c in sorted(set(NOT_RUN) - listed)]
    return problems


def test_every_block_is_run_or_listed() -> None:
    """A block or command this file would neither run nor skip for a stated reason fails here."""
    blocks = readme_blocks()
    assert len(blocks) >= 5, "README.md lost its code blocks?"
    assert unhandled(blocks) == []
    for block in blocks:
        if block.lang == "python":
            compile(block.text, f"README.md:{block.line}", "exec")


def test_a_new_block_fails_until_run_or_listed() -> None:
    text = README.read_text(encoding="utf-8")
    extra = "\n```bash\nmlflow server --port 5000  # a server\n```\n\n```yaml\nkey: 1\n```\n\n```\nplain\n```\n"
    problems = unhandled(readme_blocks(text + extra))
    assert len(problems) == 3, problems
    assert "`mlflow server --port 5000` is not a slimkit or python command" in problems[0]
    assert "a ```yaml block" in problems[1] and "a ``` block" in problems[2]
    assert any("NOT_RUN lists" in p for p in unhandled(readme_blocks(text.replace("make demo", "make dem0"))))


def test_budget_keeps_what_a_command_sets() -> None:
    args = ["-m", "pipeline.stages.prune.ratio=0.3,0.5", "pipeline.stages.prune.steps=2"]
    extra = budget(args)
    assert "pipeline.stages.prune.finetune_epochs=0" in extra
    assert "pipeline.stages.distill.epochs=0" in extra
    assert not any(e.startswith(("pipeline.stages.prune.steps=", "pipeline.stages.prune.ratio=")) for e in extra)
    assert "target.runtimes=[onnxruntime]" in extra and "data.limit=100" in extra
    swapped = budget(["pipeline=magnitude", "technique@pipeline.stages.prune=finetune"])
    assert "pipeline.stages.prune.epochs=0" in swapped and "pipeline.stages.prune.steps=1" not in swapped
    assert budget(["--help"]) == [] and budget(["plugins"]) == []
    # A command that names no model runs the small one; a named model, or one passed as an object, stays.
    assert "model=digits_cnn" in extra
    assert not any(e.startswith("model=") for e in budget(["model=torch", "model.factory=m:f"]))
    assert not any(e.startswith(("model=", "data.")) for e in budget(["pipeline=magnitude"], ("model", "data")))
    npu = budget(["pipeline=quantize", "target=npu"])
    assert "target.validation_samples=16" in npu and "target.repeats=2" in npu
    assert "target.validation_samples=16" not in extra  # cpu has no such key


def _runnable() -> list[Any]:
    return [pytest.param(b, id=b.id) for b in readme_blocks() if b.lang in ("bash", "python")]


@pytest.mark.slow
@pytest.mark.parametrize("block", _runnable())
def test_readme_block_runs(block: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.file_name:  # a file the reader writes: it imports
        monkeypatch.syspath_prepend(str(workdir))
        monkeypatch.chdir(workdir)
        __import__(Path(block.file_name).stem)
        return
    if block.lang == "python":
        import slimkit

        monkeypatch.chdir(workdir)
        monkeypatch.setattr(slimkit, "compress", _compress_with_budget(slimkit.compress))
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
        return
    for line, text, words in commands(block):
        if text in NOT_RUN:
            continue
        env, cmd = split_env(words)
        if cmd[0] == "slimkit":
            argv = [sys.executable, "-m", "slimkit.pipelines.cli", *cmd[1:], *budget(cmd[1:])]
        else:
            assert cmd[0] == "python", f"README.md:{line}: `{text}` is not run by this test; list it in NOT_RUN"
            argv = [sys.executable, *cmd[1:]]
        env = cli_env(**{**ENV_BUDGET, **env})
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"README.md:{line}: `{text}` failed\n{shlex.join(argv)}\n{describe(proc)}"
        assert "Traceback" not in proc.stderr, f"README.md:{line}: `{text}`\n{describe(proc)}"
