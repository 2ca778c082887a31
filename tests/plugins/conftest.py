"""Fixtures shared by the plugin tests: ONNX files exported from torch models (session-scoped: an export
takes seconds), used by the ONNX plugin tests and by the ONNX-side tests of the techniques.

``tests/plugins/onnx`` goes on ``sys.path`` here, so that every test under ``tests/plugins`` can import the
helpers of ``onnx_testlib``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "onnx"))

from onnx_testlib import torch_mlp  # noqa: E402


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits_cnn (trained, 1x8x8 input) exported with the torch adapter."""
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    path = tmp_path_factory.mktemp("export") / "digits_cnn.onnx"
    TorchAdapter().export_onnx(zoo.digits_cnn(), path, {"input": np.zeros((1, 1, 8, 8), np.float32)})
    return path


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`torch_mlp` exported with the torch adapter (Gemm weights with transB=1)."""
    from slimkit.plugins.torch.adapter import TorchAdapter

    path = tmp_path_factory.mktemp("export") / "mlp.onnx"
    TorchAdapter().export_onnx(torch_mlp(), path, {"input": np.zeros((1, 1, 8, 8), np.float32)})
    return path


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 2-layer, 64-wide LLaMA with its BPE tokenizer (``slimkit.plugins.llm.tiny``)."""
    from slimkit.plugins.llm.tiny import make_tiny_decoder

    return make_tiny_decoder(tmp_path_factory.mktemp("tiny_llm") / "llama")


@pytest.fixture(scope="session")
def tiny_llm_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus: standard-library source (about 60 k characters), one text file."""
    from slimkit.plugins.llm.tiny import stdlib_text

    path = tmp_path_factory.mktemp("tiny_llm_text") / "corpus.txt"
    path.write_text(stdlib_text(60_000), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llm_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Path:
    """``tiny_llm_dir`` as an fp32 ONNX model with KV cache (onnxruntime-genai's model builder):
    the path of ``model.onnx`` in a folder with ``genai_config.json`` and the tokenizer."""
    import subprocess

    out = tmp_path_factory.mktemp("tiny_llm_onnx")
    builder = [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    args = ["-i", str(tiny_llm_dir), "-o", str(out), "-p", "fp32", "-e", "cpu"]
    subprocess.run([*builder, *args], check=True, capture_output=True)
    return out / "model.onnx"
