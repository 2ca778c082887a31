"""The ``cuda`` target: its error without a GPU (through the CLI), config, 2:4 helpers; GPU runs when present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import BenchmarkRequest, DataSplits, TargetError
from slimkit.plugins.targets.cuda import NO_DEVICE, CudaTarget, cuda_device_count, is_2to4, semi_structured_layers

HAS_CUDA = cuda_device_count() > 0
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cli_without_gpu_is_one_line_exit_2(tmp_path: Path, run_cli, check_user_error) -> None:
    proc = run_cli(["pipeline=none", "model=digits_cnn", "target=cuda", "tracking=none"], tmp_path)
    assert check_user_error(proc) == "target=cuda needs a CUDA device; none found — use target=cpu"
    assert not list(tmp_path.glob("outputs/**/model.onnx"))  # refused before any work


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_check_available_without_gpu() -> None:
    with pytest.raises(TargetError) as info:
        CudaTarget({}).check_available()
    assert str(info.value) == NO_DEVICE


def test_import_needs_no_gpu_or_torch() -> None:
    code = (
        "import sys, slimkit.plugins.targets.cuda, slimkit.plugins.targets.npu\n"
        "print(sorted({'torch', 'onnxruntime', 'onnx'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"precision": "int4"}, "target.precision='int4' is not one of ['fp32', 'fp16']"),
        ({"sparsity": "4:8"}, "target.sparsity='4:8'"),
        ({"device": -1}, "target.device=-1"),
        ({"tensorrt": "yes"}, "target.tensorrt"),
        ({"repeats": 0}, "target.repeats=0"),
    ],
)
def test_bad_config(cfg: dict, needle: str) -> None:
    with pytest.raises(TargetError) as info:
        CudaTarget(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value) and ";" in str(info.value)


def test_cuda_config_composes() -> None:
    from slimkit.pipelines.config import compose, to_plain

    plain = to_plain(compose(["target=cuda", "target.precision=fp16", "target.sparsity=2:4"]))
    target = CudaTarget(plain["target"])
    assert (target.options["precision"], target.options["sparsity"], target.batch_sizes) == ("fp16", "2:4", [1, 64])


def test_is_2to4() -> None:
    w = np.array([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 4.0], [0.0, 5.0, 0.0, 6.0, 7.0, 0.0, 0.0, 0.0]])
    assert is_2to4(w)
    w[0, 1] = 9.0  # first group now has 3 non-zeros
    assert not is_2to4(w)
    assert not is_2to4(np.zeros((2, 6)))  # 6 inputs: not groups of 4


def test_semi_structured_layers_selects_2to4_linear() -> None:
    torch = pytest.importorskip("torch")
    from slimkit.plugins.techniques.magnitude_prune.torch_backend import nm_mask

    nn = torch.nn
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 64), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.mul_(nm_mask(model[0].weight))
    ok, skipped = semi_structured_layers(model)
    assert ok == ["0"]
    assert "2:4 pattern" in skipped["2"] and "multiple of 64" in skipped["3"]


@needs_cuda
def test_benchmark_on_gpu(cnn_onnx: Path, digits8: DataSplits) -> None:  # pragma: no cover - GPU only
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_cnn

    target = CudaTarget({"batch_sizes": [1, 64], "repeats": 10, "warmup": 3, "precision": "fp16"})
    target.check_available()
    request = BenchmarkRequest(
        onnx_path=cnn_onnx,
        examples={b: digits8.test.example(b) for b in (1, 64)},
        framework_model=digits_cnn(),
        framework_runner=TorchAdapter().predict,
        framework_name="torch",
    )
    lats = target.benchmark(request, lambda *a: None)
    assert {lat.runtime for lat in lats} == {"onnxruntime_cuda", "torch_cuda"}
    for lat in lats:
        assert 0 < lat.p50 <= lat.p90 and lat.gpu_mem_mb is None or lat.gpu_mem_mb > 0
    got = target.validate(cnn_onnx, TorchAdapter().outputs(digits_cnn(), digits8.test), digits8.test.inputs)
    assert got["top1_agreement"] > 0.99
