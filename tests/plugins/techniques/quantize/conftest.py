"""Fixtures of the quantize tests: digits data, a tiny random BERT with its tokenizer, a stage context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import DataSplits, Split, StageContext
from slimkit.pipelines.testing import make_stage_context

#: Query/key weights of the random BERT are scaled so attention is peaked, value/output weights so it
#: matters, as in a trained model: at BERT's random init attention is almost uniform and adds little
#: to the residual stream, which hides what quantization does to the mask.
QK_SCALE = 12.0
VO_SCALE = 6.0
WORDS = [f"w{i}" for i in range(40)] + ["the", "a", "model", "is", "small", "fast", "int", "eight"]


def _make_ctx(data: DataSplits, work: Path) -> StageContext:
    work.mkdir(parents=True, exist_ok=True)
    # the runner's context: the run's target (cpu) times auto's candidates
    return make_stage_context(data, work, stage="quantize", example=data.test.example(1))


def _one_split(inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> DataSplits:
    s = Split(inputs, labels)
    return DataSplits(name="arrays", train=s, val=s, test=s, num_classes=None if labels is None else 10)


@pytest.fixture
def make_ctx():
    """``make_ctx(data, work_dir)``: a stage context like the runner's, writing into ``work_dir``."""
    return _make_ctx


@pytest.fixture
def one_split():
    """``one_split(inputs, labels=None)``: DataSplits with the same arrays as train, val and test."""
    return _one_split


def _ort_optimized(model: Any, work: Path) -> Any:
    """The graph ONNX Runtime actually runs (level ``extended``: its fusions, QDQ ones included)."""
    import onnx
    import onnxruntime as ort_rt

    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / "model.onnx", work / "model.optimized.onnx"
    onnx.save(model, str(src))
    opts = ort_rt.SessionOptions()
    opts.graph_optimization_level = ort_rt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    ort_rt.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


@pytest.fixture
def ort_optimized():
    """``ort_optimized(model, work_dir)``: the ONNX model after ONNX Runtime's graph optimizations."""
    return _ort_optimized


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)


@pytest.fixture(scope="session")
def cnn_onnx(digits8: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The bundled digits_cnn exported to ONNX, as the onnx adapter holds it (an onnx.ModelProto)."""
    import onnx

    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_cnn

    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    TorchAdapter().export_onnx(digits_cnn(), path, digits8.test.example(1))
    return onnx.load(str(path))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide randomly initialised BERT encoder and a word-level tokenizer, saved locally."""
    pytest.importorskip("transformers")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    model = BertModel(cfg).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(QK_SCALE)
            layer.attention.self.key.weight.mul_(QK_SCALE)
            layer.attention.self.value.weight.mul_(VO_SCALE)
            layer.attention.output.dense.weight.mul_(VO_SCALE)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 lines of 3 to 20 random words: padding makes attention masks matter."""
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 21)))) for _ in range(120)]
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def bert_data(bert_dir: Path, text_file: Path) -> DataSplits:
    from slimkit.plugins.hf.text_data import load

    return load({"path": str(text_file), "tokenizer": str(bert_dir), "max_length": 24}, seed=0)
