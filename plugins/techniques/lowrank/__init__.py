"""``lowrank``: truncated SVD of fully connected weights, one layer becoming two thinner ones.

A weight ``W`` (``m x n``) is replaced by ``U_r S_r`` (``m x r``) and ``V_r^T`` (``r x n``), only where
that is cheaper: ``r * (m + n) < m * n``. The rank ``r`` of each layer is, in order of precedence,
``rank`` (the same for every layer), ``rank_ratio * min(m, n)`` (rounded up), or the smallest rank
keeping ``energy`` of the squared singular values (default 0.95).

Frameworks: ``onnx`` (Gemm/MatMul weight initializers, :mod:`.onnx_backend`) and ``torch``
(``Linear`` and ``Conv2d``, then fine-tuned, :mod:`.torch_backend`); ``apply`` dispatches on
the adapter's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)
from slimkit.plugins.torch.training import check_kd, check_training


@dataclass
class LowRankConfig(TechniqueConfig):
    """Config of :class:`LowRank`.

    energy: fraction of the squared singular values kept, in (0, 1] (used when neither ``rank`` nor
        ``rank_ratio`` is set).
    rank_ratio: rank as a fraction of ``min(m, n)`` of each layer, in (0, 1].
    rank: the same rank for every layer (each must be at least that large).
    layer_types: layers whose weights are factorized (``Linear``, or ONNX ``Gemm``/``MatMul``).
    ignored_layers: weights kept as they are (initializer or node names).
    finetune, epochs, lr, batch_size, alpha, temperature: torch only, training after the
        factorisation: ``distill`` (from the model before compression), ``plain`` or ``none``.
    """

    energy: float = 0.95
    rank_ratio: float | None = None
    rank: int | None = None
    layer_types: list[str] = field(default_factory=lambda: ["Linear"])
    ignored_layers: list[str] = field(default_factory=list)
    finetune: str = "distill"
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        check_choice("finetune", self.finetune, ("distill", "plain", "none"))
        check_training(self.epochs, self.lr, self.batch_size)
        check_kd(self.alpha, self.temperature)
        check_range("energy", self.energy, 0.0, 1.0, low_open=True, high_open=False, example=0.95)
        if self.rank_ratio is not None:
            check_range("rank_ratio", self.rank_ratio, 0.0, 1.0, low_open=True, high_open=False, example=0.25)
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank={self.rank} must be >= 1; use e.g. 64, or rank_ratio=0.25")
        if not self.layer_types:
            raise ConfigError("layer_types is empty; use e.g. [Linear]")


class LowRank(Technique):
    """Truncated-SVD factorization of fully connected weights where it saves multiply-adds."""

    name = "lowrank"
    description = "low-rank SVD: a fully connected layer becomes two thinner ones where that is cheaper"
    frameworks = ("onnx", "torch")
    Config = LowRankConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        if adapter.name == "onnx":
            from .onnx_backend import factorize

            out = factorize(model, self.config, adapter, ctx)  # type: ignore[arg-type]
        elif adapter.name == "torch":
            from .torch_backend import factorize as factorize_torch

            out = factorize_torch(model, self.config, adapter, ctx)
        else:
            raise TechniqueError(f"lowrank does not support {adapter.name} models yet; export the model to ONNX first")
        ctx.info["hint"] = rank_hint(ctx.stage, self.config, ctx.metrics)
        return out


def rank_hint(stage: str, cfg: LowRankConfig, metrics: dict[str, float]) -> str:
    """The knob of a factorisation that saved little, for the report's note when the target sees no
    change (or a slower, bigger model): which setting chose the ranks, and the one that cuts deeper."""
    ratio = metrics.get("param_ratio", metrics.get("weight_params_ratio"))
    got = f" cut the parameters {ratio:.2f}x" if ratio is not None else ""
    key = f"pipeline.stages.{stage}"
    if cfg.rank is not None:
        how, knob = f"rank={cfg.rank}", f"a lower {key}.rank"
    elif cfg.rank_ratio is not None:
        how, knob = f"rank_ratio={cfg.rank_ratio}", f"a lower {key}.rank_ratio (e.g. {cfg.rank_ratio / 2:g})"
    else:
        how, knob = f"energy={cfg.energy}", f"{key}.rank_ratio=0.5 (or a lower energy, e.g. {key}.energy=0.8)"
    return f"{stage} ({how}){got}, and every factorised layer becomes two (more work per layer on a CPU); set {knob}"


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``lowrank`` technique."""
    registry.add_technique(LowRank)
