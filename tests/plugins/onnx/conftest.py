"""Fixtures of the ONNX plugin tests: ONNX files exported from torch models (session-scoped: an
export takes seconds) and the digits data. Helpers live in ``onnx_testlib``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnx_testlib import torch_mlp  # noqa: E402

from slimkit.core import DataSplits  # noqa: E402


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)


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
