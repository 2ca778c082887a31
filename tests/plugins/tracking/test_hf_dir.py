"""``model=hf`` runs keep the Hugging Face form: ``hf/`` (config.json, tokenizer, model.onnx) loads back,
and is one artifact: the files of the logged MLflow model ``model``."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("mlflow_globals")

from slimkit.core import Report  # noqa: E402
from slimkit.pipelines.testing import IN_PROCESS_TIMING  # noqa: E402
from slimkit.plugins.hf import adapter as hf_plugin  # noqa: E402

WORDS = [f"w{i}" for i in range(30)]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random BERT encoder with a word-level tokenizer (``dir``), its ONNX export and a text file."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from slimkit.plugins.hf.adapter import HfAdapter

    root = tmp_path_factory.mktemp("bert")
    model_dir = root / "bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(model_dir)
    BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True).save_pretrained(model_dir)
    model = HfAdapter().load({"path": str(model_dir)})
    example = {
        "input_ids": np.array([[2, 7, 8, 9, 3]], np.int64),
        "attention_mask": np.ones((1, 5), np.int64),
        "token_type_ids": np.zeros((1, 5), np.int64),
    }
    run_dir = root / "run"
    run_dir.mkdir()
    HfAdapter().export_onnx(model, run_dir / "model.onnx", example)
    rng = np.random.default_rng(0)
    text = root / "t.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 10)))) for _ in range(40)) + "\n")
    return {"dir": model_dir, "run_dir": run_dir, "text": text}


def _loads_back(folder: Path) -> np.ndarray:
    """AutoConfig and AutoTokenizer read ``folder``; its model.onnx runs on the tokenizer's output."""
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(folder).model_type == "bert"
    enc = AutoTokenizer.from_pretrained(folder)(["w1 w2 w3", "w4"], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: enc[i.name] for i in session.get_inputs()})[0]


def test_the_run_end_hook_writes_a_directory_that_loads_back(bert: dict[str, Path]) -> None:
    run_dir = bert["run_dir"]
    logged: list[tuple[Path, str]] = []
    spec = types.SimpleNamespace(model={"adapter": "hf", "path": str(bert["dir"])}, data={}, run_dir=run_dir)
    ctx = types.SimpleNamespace(spec=spec, artifact=lambda path, kind: logged.append((Path(path), kind)))
    report = Report(artifacts={"onnx": "model.onnx"})
    hf_plugin.slimkit_run_end(ctx=ctx, report=report)

    folder = run_dir / "hf"
    assert logged == [(folder, "model_dir")] and report.artifacts["hf"] == "hf"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "vocab.txt", "tokenizer_config.json", "model.onnx"} <= names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)  # its model is the ONNX file
    assert _loads_back(folder).shape == (2, 5, 32)  # [CLS] w1 w2 w3 [SEP]


def test_other_models_write_no_directory(tmp_path: Path) -> None:
    spec = types.SimpleNamespace(model={"adapter": "torch"}, data={}, run_dir=tmp_path)
    ctx = types.SimpleNamespace(spec=spec, artifact=lambda *a: pytest.fail("logged"))
    hf_plugin.slimkit_run_end(ctx=ctx, report=Report(artifacts={"onnx": "model.onnx"}))
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_an_hf_run_logs_the_directory_as_its_mlflow_model(
    bert: dict[str, Path], run_cli: Any, show: Any, tmp_path: Path
) -> None:
    import mlflow.artifacts

    from slimkit.plugins.tracking.model_logging import reading

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    args = ["pipeline=none", "model=hf", f"model.path={bert['dir']}", "data=text", f"data.path={bert['text']}"]
    args += ["data.max_length=12", "target.repeats=3", "target.warmup=1", "target.batch_sizes=[1]"]
    args += ["target.runtimes=[onnxruntime]", *IN_PROCESS_TIMING, f"tracking.uri={uri}"]
    proc = run_cli(args, tmp_path / "cwd")
    assert proc.returncode == 0, show(proc)
    (report_path,) = (tmp_path / "cwd" / "outputs").glob("*/*/report.json")
    import json

    report = json.loads(report_path.read_text())
    assert report["artifacts"]["hf"] == "hf"
    _loads_back(report_path.parent / "hf")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    top = {a.path for a in client.list_artifacts(report["mlflow_run_id"])}
    assert not {"hf", "onnx", "model"} & top  # one artifact: the logged model
    with reading(uri):  # MLflow resolves a run's logged model through the process-wide tracking URI
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{report['mlflow_run_id']}/model", dst_path=str(tmp_path / "dl")
        )
    assert {"MLmodel", "config.json", "vocab.txt", "model.onnx"} <= {p.name for p in Path(local).iterdir()}
    _loads_back(Path(local))
