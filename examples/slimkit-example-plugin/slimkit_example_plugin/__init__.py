"""An example slimkit plugin: ``random_prune`` zeroes a random fraction of every layer's weights.

Its target, ``example_cpu``, is in :mod:`slimkit_example_plugin.target` (an entry point of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimkit.core import StageContext, Technique, TechniqueConfig, check_range, hookimpl


@dataclass
class RandomPruneConfig(TechniqueConfig):
    """amount: fraction of each Conv/Linear weight set to zero, in [0, 1)."""

    amount: float = 0.3

    def __post_init__(self) -> None:
        check_range("amount", self.amount, 0.0, 1.0, example=0.3)


class RandomPrune(Technique):
    """Random unstructured pruning (a baseline that magnitude pruning should beat)."""

    name = "random_prune"
    description = "zero a random fraction of each Conv/Linear weight (control experiment)"
    frameworks = ("torch",)
    Config = RandomPruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        import torch

        model = adapter.copy(model)  # a technique returns a new model and leaves its input as it was
        gen = torch.Generator().manual_seed(ctx.seed)
        zeros = total = 0
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                    keep = torch.rand(module.weight.shape, generator=gen) >= self.config.amount
                    module.weight.mul_(keep)
                    zeros += int((~keep).sum())
                    total += keep.numel()
        ctx.metrics["sparsity"] = zeros / max(total, 1)
        return model


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(RandomPrune)
