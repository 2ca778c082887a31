"""The factors of a torch ``Conv2d`` keep the replaced conv's geometry attributes, so model code that reads
them at run time keeps working: transformers' MobileNetV2 pads TensorFlow-style from ``stride``,
``kernel_size`` and ``dilation`` of its convolutions (``pipeline=lowrank`` failed on it with
``AttributeError: 'Sequential' object has no attribute 'stride'``)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import DataSplits, Split
from slimkit.pipelines.testing import read_report, run_cli, single_run_dir
from slimkit.plugins.techniques.lowrank import LowRank, LowRankConfig
from slimkit.plugins.techniques.lowrank.torch_backend import FactorizedConv2d, FactorizedLinear, factorised
from slimkit.plugins.torch.training import set_submodule

HERE = Path(__file__).parent
GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")


def test_factorised_conv_keeps_the_replaced_conv_geometry() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 12, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(1, 2), padding_mode="reflect")
    two = factorised(conv, 6)
    assert isinstance(two, FactorizedConv2d) and isinstance(two, nn.Sequential) and len(two) == 2
    assert {a: getattr(two, a) for a in GEOMETRY} == {a: getattr(conv, a) for a in GEOMETRY}
    assert two.rank == 6 and two[0].out_channels == 6 and two[1].kernel_size == (1, 1)
    lin = factorised(nn.Linear(40, 30), 8)
    assert isinstance(lin, FactorizedLinear) and (lin.in_features, lin.out_features, lin.rank) == (40, 30, 8)
    buf = io.BytesIO()
    torch.save(nn.Sequential(two, nn.ReLU()), buf)  # saved models pickle the class: it must be importable
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(back[0](x), two(x))
    assert back[0].stride == (2, 1)


def mobilenet_v2() -> nn.Module:
    pytest.importorskip("transformers")
    import lowrank_models

    return lowrank_models.mobilenet_v2()


@pytest.fixture(autouse=True)
def _models_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def test_full_rank_factors_in_a_transformers_mobilenet_v2_compute_the_same(adapter: Any) -> None:
    base = mobilenet_v2()
    model = adapter.copy(base)
    convs = [
        "mobilenet_v2.conv_stem.first_conv.convolution",  # 3x3, stride 2, TensorFlow padding
        "mobilenet_v2.conv_1x1.convolution",
    ]
    for name in convs:
        conv = model.get_submodule(name)
        set_submodule(model, name, factorised(conv, min(conv.out_channels, conv.weight[0].numel())))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, base(x).logits, rtol=1e-4, atol=1e-4)
        assert model(torch.randn(1, 3, 15, 17)).logits.shape == (1, 10)  # padding computed from the input size


def pixels(n: int = 32) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> Split:
        return Split({"pixel_values": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}, None)

    return DataSplits("random", split(), split(), split())


def test_lowrank_on_a_transformers_mobilenet_v2_without_labels(adapter: Any, make_ctx: Any) -> None:
    base = mobilenet_v2()
    ctx = make_ctx(pixels(), baseline=base)
    cfg = LowRankConfig(technique="lowrank", layer_types=["Linear", "Conv2d"], epochs=1)
    out = LowRank(cfg).apply(adapter.copy(base), adapter, ctx)
    convs = [n for n in ctx.info["layers"] if isinstance(out.get_submodule(n), FactorizedConv2d)]
    assert convs, ctx.info
    assert "val_accuracy_init" not in ctx.metrics and np.isfinite(ctx.metrics["train_loss"])
    with torch.no_grad():
        assert out(torch.randn(2, 3, 16, 16)).logits.shape == (2, 10)


@pytest.mark.slow
def test_lowrank_pipeline_on_a_transformers_mobilenet_v2_from_the_cli(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    args = [
        "pipeline=lowrank",
        "model=torch",
        "model.factory=lowrank_models:mobilenet_v2",
        "data=random",
        "data.samples=32",
        "tracking=none",
        "cache=false",
        "target.batch_sizes=[1]",
        "target.runtimes=[onnxruntime]",
        "target.isolate=false",
        "target.repeats=2",
    ]
    done = run_cli(args, tmp_path, env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    report = read_report(run_dir)
    assert report["status"] == "FINISHED"
    assert any("convolution" in n for n in report["stages"][0]["info"]["layers"])
    import onnxruntime as ort

    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 16, 16), np.float32)})[0]
    assert out.shape == (2, 10)
