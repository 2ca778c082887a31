"""``slimkit generate``: a greedy completion from an LLM ONNX folder (onnxruntime-genai), one-line errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")

from slimkit.pipelines import cli  # noqa: E402
from slimkit.pipelines.generate import generate, model_folder  # noqa: E402

PROMPT = "def split(s, sep):"


def test_generate_prints_the_prompt_and_a_completion(run_cli, show, tiny_llm_onnx: Path, tmp_path: Path) -> None:
    proc = run_cli(["generate", str(tiny_llm_onnx.parent), PROMPT, "--max-new-tokens", "12"], tmp_path)
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.startswith(PROMPT), show(proc)
    assert len(proc.stdout.rstrip("\n")) > len(PROMPT), show(proc)


def test_generate_is_deterministic(tiny_llm_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        assert cli.main(["generate", str(tiny_llm_onnx.parent), PROMPT, "--max-new-tokens", "16"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith(PROMPT) and len(outputs[0]) > len(PROMPT) + 1


def test_generate_stops_at_max_new_tokens(tiny_llm_onnx: Path) -> None:
    short = generate(tiny_llm_onnx.parent, PROMPT, max_new_tokens=2)
    longer = generate(tiny_llm_onnx.parent, PROMPT, max_new_tokens=10)
    assert longer.startswith(short) and len(longer) > len(short)


def test_run_dir_forms(tiny_llm_onnx: Path, tmp_path: Path) -> None:
    """A run folder, ``run=RUN_DIR``, the folder's model.onnx and a run folder whose genai files are in ``hf/``."""
    folder = tiny_llm_onnx.parent
    assert model_folder(folder) == folder
    assert model_folder(f"run={folder}") == folder
    assert model_folder(tiny_llm_onnx) == folder
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "genai_config.json").write_text("{}")
    assert model_folder(run) == run / "hf"


def test_missing_folder_is_one_line_exit_2(run_cli, check_user_error, tmp_path: Path) -> None:
    proc = run_cli(["generate", str(tmp_path / "nowhere"), PROMPT], tmp_path)
    check_user_error(proc, "nowhere is not a folder")


def test_not_an_llm_run_is_one_line_exit_2(tiny_llm_onnx: Path, tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(tiny_llm_onnx, plain / "model.onnx")
    assert cli.main(["generate", str(plain), PROMPT]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "was not made by an LLM run" in err and "model=hf_causal" in err, err


def test_bad_options_are_one_line_exit_2(tiny_llm_onnx: Path, capsys) -> None:
    assert cli.main(["generate", str(tiny_llm_onnx.parent), PROMPT, "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens=0" in capsys.readouterr().err
    assert cli.main(["generate", str(tiny_llm_onnx.parent), ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert cli.main(["generate", str(tiny_llm_onnx.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "usage: slimkit generate" in err, err


def test_without_onnxruntime_genai(tiny_llm_onnx: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # import fails as if not installed
    assert cli.main(["generate", str(tiny_llm_onnx.parent), PROMPT]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'slimkit[llm]'" in err, err


def test_help(capsys) -> None:
    assert cli.main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max-new-tokens" in out and "RUN_DIR" in out
    assert "slimkit generate RUN_DIR" in cli.HELP_HEADER
