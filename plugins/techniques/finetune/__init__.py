"""``finetune``: train the current model further on the training split (SGD, cosine schedule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    check_choice,
    check_range,
    hookimpl,
)


@dataclass
class FinetuneConfig(TechniqueConfig):
    """epochs, lr, batch_size, optimizer (``sgd`` or ``adam``), weight_decay, augment (random shifts)."""

    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs} must be >= 0; use e.g. 2")
        check_range("lr", self.lr, 0.0, 10.0, low_open=True, example=0.01)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0, example=5e-4)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1; use e.g. 64")


class Finetune(Technique):
    """Plain supervised fine-tuning of a PyTorch model."""

    name = "finetune"
    description = "supervised fine-tuning (SGD/AdamW, cosine schedule)"
    frameworks = ("torch",)
    Config = FinetuneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.torch.train import FitConfig, fit

        cfg: FinetuneConfig = self.config  # type: ignore[assignment]
        hist = fit(
            model,
            ctx.data,
            FitConfig(
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                optimizer=cfg.optimizer,
                weight_decay=cfg.weight_decay,
                augment=cfg.augment,
            ),
            ctx.seed,
            progress=ctx.progress,
            task="fine-tune",
        )
        if hist.val_accuracy:
            ctx.metrics["val_accuracy"] = hist.val_accuracy[-1]
            ctx.metrics["train_loss"] = hist.loss[-1]
        return model


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(Finetune)
