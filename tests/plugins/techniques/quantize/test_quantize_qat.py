"""``mode=qat``: BatchNorm folding, fake quantization, fine-tuning, export as int8 QDQ."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core import TechniqueError
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig
from slimkit.plugins.techniques.quantize.qat import fake_quant_weight, fold_batchnorm


def test_fold_batchnorm_keeps_outputs_and_removes_batchnorms(digits8) -> None:
    import torch

    from slimkit.plugins.torch.zoo import digits_resnet

    model = digits_resnet()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        folded, note = fold_batchnorm(model)
        after = model(x)
    assert note is None and len(folded) == 21  # every conv of the ResNet-20 (19 + 2 shortcuts)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_fake_quant_weight_is_on_the_grid_and_passes_gradients() -> None:
    import torch

    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    q = fake_quant_weight(w, 4, per_channel=True)
    scale = w.detach().abs().reshape(8, -1).max(1).values / 7
    levels = (q.detach() / scale.reshape(-1, 1, 1, 1)).round()
    torch.testing.assert_close(q.detach(), levels * scale.reshape(-1, 1, 1, 1))
    assert levels.abs().max() <= 7
    q.sum().backward()
    assert w.grad is not None and bool((w.grad != 0).any())  # straight-through


def test_qat_needs_a_torch_model(cnn_onnx, digits8, make_ctx, tmp_path) -> None:
    with pytest.raises(TechniqueError, match="mode=qat trains in PyTorch and this is a onnx model; use mode=static"):
        Quantize(QuantizeConfig(mode="qat")).apply(cnn_onnx, OnnxAdapter(), make_ctx(digits8, tmp_path))


def _nll(model, data) -> tuple[float, float]:
    """Cross-entropy and accuracy on validation + test (540 samples)."""
    x = np.concatenate([data.val.inputs["input"], data.test.inputs["input"]])
    y = np.concatenate([data.val.labels, data.test.labels])
    logits = OnnxAdapter().predict(model, {"input": x}).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


@pytest.mark.slow
def test_qat_beats_ptq_with_4bit_weights(digits8, make_ctx, tmp_path) -> None:
    import onnx

    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_cnn

    common = {"weight_bits": 4, "per_channel": False, "calibration_samples": 64}
    adapter = TorchAdapter()
    adapter.seed(0)
    ptq = Quantize(QuantizeConfig(mode="static", **common)).apply(
        digits_cnn(), adapter, make_ctx(digits8, tmp_path / "p")
    )
    adapter.seed(0)
    ctx = make_ctx(digits8, tmp_path / "q")
    qat = Quantize(QuantizeConfig(mode="qat", qat_epochs=1, **common)).apply(digits_cnn(), adapter, ctx)
    assert ctx.info["mode"] == "qat" and len(ctx.info["qat"]["folded_batchnorm"]) == 3
    nll_ptq, acc_ptq = _nll(ptq, digits8)
    nll_qat, acc_qat = _nll(qat, digits8)
    assert nll_qat < nll_ptq and acc_qat >= acc_ptq
    # the exported model is int8 QDQ with weights on the 4-bit grid, which ORT runs with int8 kernels
    weights = [onnx.numpy_helper.to_array(i) for i in qat.graph.initializer if i.name.endswith(".weight_quantized")]
    assert len(weights) == 5 and all(w.dtype == np.int8 and np.abs(w).max() <= 7 for w in weights)
