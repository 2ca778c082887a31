"""Fixtures of the target tests: the bundled digits models exported to ONNX and quantized (QDQ).

Quantization here uses ``onnxruntime.quantization.quantize_static`` directly (QDQ, uint8 activations,
int8 per-channel weights, calibrated on training images) on a model exported with
``TorchAdapter().export_onnx`` and fixed to batch 1, so that these tests do not depend on the
``quantize`` technique.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataSplits


def export(model_name: str, data: DataSplits, path: Path) -> Path:
    """Export a bundled digits model (``digits_cnn``, ``digits_resnet``) to ONNX (dynamic batch)."""
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    model = getattr(zoo, model_name)()
    TorchAdapter().export_onnx(model, path, data.test.example(1))
    return path


def quantize_qdq(fp32: Path, data: DataSplits, out: Path, *, batch: int = 1, activations: str = "uint8") -> Path:
    """Fix ``fp32`` to ``batch`` and quantize it statically: QDQ, ``activations``, int8 per-channel weights."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from slimkit.plugins.targets.npu import fix_static_shapes

    fixed = out.with_name(out.stem + ".fixed.onnx")
    model = onnx.load(str(fp32))
    fix_static_shapes(model, batch)
    onnx.save(model, str(fixed))
    x = data.train.inputs["input"][: 128 // batch * batch]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": x[i : i + batch]} for i in range(0, len(x), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    act = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}[activations]
    quantize_static(
        str(fixed),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=act,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)


@pytest.fixture(scope="session")
def digits32() -> DataSplits:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=32)


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory: pytest.TempPathFactory, digits8: DataSplits) -> Path:
    """digits_cnn exported to ONNX (fp32, dynamic batch)."""
    return export("digits_cnn", digits8, tmp_path_factory.mktemp("cnn") / "cnn.onnx")


@pytest.fixture(scope="session")
def cnn_qdq(tmp_path_factory: pytest.TempPathFactory, cnn_onnx: Path, digits8: DataSplits) -> Path:
    """digits_cnn, QDQ uint8 activations / int8 weights, batch 1."""
    return quantize_qdq(cnn_onnx, digits8, tmp_path_factory.mktemp("cnn_qdq") / "cnn_qdq.onnx")


@pytest.fixture(scope="session")
def resnet_qdq(tmp_path_factory: pytest.TempPathFactory, digits32: DataSplits) -> Path:
    """digits_resnet, QDQ uint8 activations / int8 weights, batch 1."""
    folder = tmp_path_factory.mktemp("resnet")
    fp32 = export("digits_resnet", digits32, folder / "resnet.onnx")
    return quantize_qdq(fp32, digits32, folder / "resnet_qdq.onnx")


@pytest.fixture
def qnn() -> None:
    """Skip where onnxruntime-qnn (the npu target's runtime) is not installed (it is on Linux x86_64)."""
    pytest.importorskip("onnxruntime_qnn")
