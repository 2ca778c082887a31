"""Quantization-aware training in plain PyTorch (``mode=qat``).

1. BatchNorm layers that directly follow a convolution are folded into it (found with ``torch.fx``;
   a model fx cannot trace keeps its BatchNorms, with a note).
2. Every Conv/Linear not excluded is wrapped: its input is fake-quantized to u8 with an asymmetric
   range tracked by an exponential moving average (the range ORT's QDQ will use for that tensor),
   its weight to ``weight_bits`` per output channel, symmetrically, scale ``max|w| / (2**(b-1)-1)``
   (``torch.fake_quantize_per_channel_affine``; straight-through gradients).
3. The model is fine-tuned with :func:`slimkit.plugins.torch.train.fit` (cross-entropy with labels,
   or distillation to the float model's outputs without them).
4. The wrappers are removed: weights are written back *on their grid* and the learned scales and
   activation ranges are returned; the technique exports the float model and has ORT's quantizer write
   the QDQ model with exactly those scales (``TensorQuantOverrides``). Going through ORT's own
   quantizer, rather than writing QDQ nodes by hand, gives the QDQ layout that ORT's fusions turn
   into QLinearConv/QGemm, with the same handling of biases, residual Adds and pooling as PTQ, so the
   two differ only in the weights and ranges, which is the comparison that matters.

torchao 0.18 was not adopted: it was not measured against this module in this change (no time on
the shared machine), and this module needs nothing beyond torch (~150 lines), trains the exact
per-channel symmetric weights and u8 activation ranges that ORT's kernels run, and exports through the
same quantizer as PTQ. Comparing the two remains open.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext, TechniqueError
from slimkit.plugins.torch.training import set_submodule

if TYPE_CHECKING:
    from torch import nn

    from . import QuantizeConfig


@dataclass
class QatResult:
    """The fine-tuned float model (weights on the grid) and what ORT needs to reproduce it."""

    model: Any
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)


def fold_batchnorm(model: nn.Module) -> tuple[list[str], str | None]:
    """Fold each BatchNorm that directly follows a Conv (its only user) into the Conv, in place.

    Returns the folded conv names and a note when the model cannot be traced.
    """
    import torch
    from torch import fx, nn

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:
        return [], f"BatchNorm not folded: torch.fx cannot trace the model ({type(exc).__name__})"
    modules = dict(model.named_modules())
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        prev = node.args[0] if node.args else None
        if getattr(prev, "op", None) != "call_module" or len(prev.users) != 1:
            continue
        conv = modules.get(prev.target)
        if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        bn = modules[node.target]
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(std)
            beta = bn.bias if bn.affine else torch.zeros_like(std)
            factor = gamma / std
            conv.weight.mul_(factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = beta + (bias - bn.running_mean) * factor
            conv.bias = nn.Parameter(new_bias.detach().clone())
        set_submodule(model, node.target, nn.Identity())
        folded.append(prev.target)
    return folded, None


def _weight_scale(w: Any, bits: int, per_channel: bool) -> Any:
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().abs().reshape(w.shape[0], -1)
    s = flat.max(dim=1).values if per_channel else flat.max().reshape(1)
    return (s / qmax).clamp_min(1e-8)


def fake_quant_weight(w: Any, bits: int, per_channel: bool) -> Any:
    """``w`` fake-quantized symmetrically to ``bits`` (per output channel), straight-through gradient."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    scale = _weight_scale(w, bits, per_channel)
    if per_channel:
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax, qmax)
    return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, -qmax, qmax)


def make_wrapper(module: nn.Module, bits: int, per_channel: bool, decay: float) -> nn.Module:
    """A module that runs ``module`` with fake-quantized input and weight."""
    import torch
    from torch import nn

    class FakeQuant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mod = module
            self.register_buffer("lo", torch.zeros(()))
            self.register_buffer("hi", torch.zeros(()))
            self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                with torch.no_grad():
                    lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                    if not bool(self.seen):
                        self.lo.copy_(lo)
                        self.hi.copy_(hi)
                        self.seen.fill_(True)
                    else:
                        self.lo.mul_(decay).add_((1 - decay) * lo)
                        self.hi.mul_(decay).add_((1 - decay) * hi)
            if bool(self.seen):
                scale = float((self.hi - self.lo).clamp_min(1e-8)) / 255.0
                zp = int(round(-float(self.lo) / scale))
                x = torch.fake_quantize_per_tensor_affine(x, scale, min(max(zp, 0), 255), 0, 255)
            w = fake_quant_weight(self.mod.weight, bits, per_channel)
            if isinstance(self.mod, nn.Linear):
                return nn.functional.linear(x, w, self.mod.bias)
            return self.mod._conv_forward(x, w, self.mod.bias)

    return FakeQuant()


def train_qat(model: Any, adapter: Any, ctx: StageContext, cfg: QuantizeConfig, notes: list[str]) -> QatResult:
    """Fold BatchNorm, fake-quantize, fine-tune; return the float model with weights on the grid."""
    import copy

    import torch
    from torch import nn

    from slimkit.plugins.torch.train import FitConfig, accuracy, fit, logits_of

    if not isinstance(model, nn.Module):
        raise TechniqueError(f"mode=qat needs a torch.nn.Module, got {type(model).__name__}; use mode=static")
    teacher = copy.deepcopy(model).eval() if ctx.data.train.labels is None else None
    folded, note = fold_batchnorm(model)
    if note:
        notes.append(note)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)]
    kept = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in cfg.exclude)]
    targets = [n for n in names if n not in kept]
    if not targets:
        raise TechniqueError(
            "the model has nothing to quantize: no Conv/Linear layer (after exclude); "
            "drop the quantize stage or exclude fewer layers"
        )
    wrappers: dict[str, nn.Module] = {}
    for name in targets:
        w = make_wrapper(model.get_submodule(name), cfg.weight_bits, cfg.per_channel, cfg.ema_decay)
        set_submodule(model, name, w)
        wrappers[name] = w
    # Initialise the activation ranges on the calibration samples before training moves them.
    calib = ctx.data.train.take(cfg.calibration_samples)
    model.train()
    with torch.no_grad():
        for batch, _ in calib.batches(cfg.calibration_batch_size):
            model(*[torch.from_numpy(np.ascontiguousarray(v)) for v in batch.values()])
    loss_fn = None
    if teacher is not None:

        def loss_fn(out: torch.Tensor, labels: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                ref = logits_of(teacher(*inputs))
            return nn.functional.mse_loss(out, ref)

    hist = fit(
        model,
        ctx.data,
        FitConfig(epochs=cfg.qat_epochs, lr=cfg.lr, batch_size=cfg.batch_size, optimizer=cfg.optimizer),
        ctx.seed,
        loss_fn=loss_fn,
        progress=ctx.progress,
        task="QAT fine-tune",
    )
    result = QatResult(model=model, folded=folded, history={"loss": hist.loss, "val_accuracy": hist.val_accuracy})
    with torch.no_grad():
        for name, w in wrappers.items():
            mod = w.mod
            mod.weight.copy_(fake_quant_weight(mod.weight, cfg.weight_bits, cfg.per_channel))
            result.weight_scales[f"{name}.weight"] = _weight_scale(mod.weight, cfg.weight_bits, cfg.per_channel).numpy()
            if bool(w.seen):
                result.input_ranges[name] = (float(w.lo), float(w.hi))
            set_submodule(model, name, mod)
    model.eval()
    if ctx.data.val.labels is not None:
        ctx.metrics["qat_val_accuracy_float_grid"] = accuracy(model, ctx.data.val)
    ctx.info["qat"] = {"folded_batchnorm": folded, "layers": targets, "kept_float": kept, **result.history}
    return result


def tensor_ranges(prepared: Any, input_ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Map module input ranges onto the ONNX tensors feeding the nodes with those modules' weights."""
    from . import ort

    by_weight = {n.weight: n.name for n in ort.quantizable_nodes(prepared)}
    nodes = {n.name: n for n in prepared.graph.node}
    out: dict[str, tuple[float, float]] = {}
    for module, rng in input_ranges.items():
        node_name = by_weight.get(f"{module}.weight")
        if node_name is None:
            continue
        tensor = nodes[node_name].input[0]
        out.setdefault(tensor, rng)
    return out
