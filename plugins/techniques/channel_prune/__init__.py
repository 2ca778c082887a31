"""``channel_prune``: structured pruning that makes models smaller and faster in every runtime.

Three algorithms, one config (:class:`ChannelPruneConfig`), chosen by the model's structure, not by the
library that built it:

- :mod:`.decoder`: decoder LLMs (``model=hf_causal``, LLaMA-style layers) lose MLP neurons (``ratio``)
  and attention heads in whole key/value groups (``head_ratio``), the same number in every layer, and
  their ``config`` says the new widths (the ONNX export reads it);
- :mod:`.transformer`: models with transformer encoder layers (query/key/value/output projections and an
  FFN pair laid out as in BERT, RoBERTa, ELECTRA, ViT/DeiT, DistilBERT: :data:`.transformer.LAYOUTS`)
  lose attention heads (``head_ratio``) and feed-forward neurons (``ratio``);
- :mod:`.cnn`: every other model (convolutional and MLP models, torchvision's or transformers' ResNet,
  MobileNetV2, ConvNeXt, ...) loses channels, filters and neurons through Torch-Pruning's
  ``DependencyGraph``, which keeps residual additions, concatenations, grouped/depthwise convolutions,
  BatchNorm, LayerNorm and loose parameters (ConvNeXt's layer scale) consistent; the layers that produce
  the model's outputs are kept, attention and recurrent layers it does not know are left alone,
  data-dependent control flow is refused before tracing.

Both plan how many units each layer keeps (``uniform`` or ``global``, rounded to ``round_to``; a ratio
that would empty a layer is an error naming it) and prune in ``steps`` with fine-tuning after each
(``finetune: distill`` from the uncompressed model, or ``plain``): :mod:`.common`.
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
from slimkit.plugins.torch.training import HINT_MODES, TORCH_FRAMEWORKS, check_kd, check_losses, check_training

IMPORTANCE = ("l1", "l2", "taylor", "bn_scale", "activation")


@dataclass
class ChannelPruneConfig(TechniqueConfig):
    """Config of :class:`ChannelPrune`.

    ratio: fraction of channels (FFN neurons for transformers) removed, in [0, 1).
    importance: ``l2`` (default, as in Torch-Pruning) | ``l1`` | ``taylor`` | ``bn_scale``. l2 kept more
        accuracy than l1 on ``pipeline=structured`` (bundled ResNet, 50 %) across seeds;
        ``pipeline=compact`` (75 % of what 6 removed blocks leave) sets l1, which kept more there.
        ``activation`` (decoder LLMs only): a unit's weights times the RMS of the input it reads on
        calibration windows (Wanda-style, Sun et al. 2023; the input of ``down_proj`` / ``o_proj``).
    scope: ``uniform`` (each layer loses ``ratio``) or ``global`` (one ranking over all layers; no
        layer loses more than ``max_layer_ratio``).
    steps: pruning steps (ratio grows linearly); fine-tuning runs after each.
    round_to: kept channels are rounded to the nearest multiple (at least one multiple; layers
        narrower than it are not rounded); 1 disables rounding.
    ignored_layers: module names left unpruned (with the layers coupled to them).
    head_ratio: transformers: fraction of attention heads removed per layer (null: same as ratio).
    calibration_batches: batches of the training split for ``taylor`` importance.
    finetune: ``distill`` (from the uncompressed model), ``plain`` (cross-entropy) or ``none``.
    finetune_epochs, lr, batch_size: fine-tuning after each step; alpha, temperature: distillation.
    hints: ``stages`` (default) or ``none``: distillation also matches the feature map at the end of
        every spatial stage to the teacher's through a learned 1x1 projection (see ``distill``),
        weighed by ``beta``.
    losses: distillation term per output of a multi-output model (name or position -> ``kl``, ``mse``,
        ``smooth_l1``), as in ``distill``; outputs not named follow its rule.
    """

    ratio: float = 0.5
    importance: str = "l2"
    scope: str = "uniform"
    steps: int = 1
    round_to: int = 8
    max_layer_ratio: float = 0.9
    ignored_layers: list[str] = field(default_factory=list)
    head_ratio: float | None = None
    calibration_batches: int = 4
    finetune: str = "distill"
    finetune_epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    alpha: float = 0.5
    temperature: float = 1.0
    hints: str = "stages"
    beta: float = 1.0
    losses: dict[Any, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, example=0.5)
        if self.head_ratio is not None:
            check_range("head_ratio", self.head_ratio, 0.0, 1.0, example=0.5)
        check_range("max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, low_open=True, high_open=False, example=0.9)
        check_choice("importance", self.importance, IMPORTANCE)
        check_choice("scope", self.scope, ("uniform", "global"))
        check_choice("finetune", self.finetune, ("distill", "plain", "none"))
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1; use 1 for one-shot pruning")
        if self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be >= 1; use 8, or 1 to disable rounding")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches={self.calibration_batches} must be >= 1; use e.g. 4")
        check_training(self.finetune_epochs, self.lr, self.batch_size, "finetune_epochs")
        check_kd(self.alpha, self.temperature)
        check_choice("hints", self.hints, HINT_MODES)
        check_range("beta", self.beta, 0.0, 1e6, example=1.0)
        check_losses(self.losses)


class ChannelPrune(Technique):
    """Structured channel pruning (Torch-Pruning graph) and transformer head/FFN pruning, by model structure."""

    name = "channel_prune"
    description = "structured channel/filter pruning (dependency graph), attention heads and FFN neurons; fine-tuned"
    frameworks = TORCH_FRAMEWORKS
    Config = ChannelPruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.torch.training import is_causal_lm

        from .cnn import prune_channels
        from .decoder import prune_decoder
        from .transformer import is_transformer, prune_transformer

        cfg: ChannelPruneConfig = self.config  # type: ignore[assignment]
        if is_causal_lm(model):  # decoder LLMs: MLP width and KV groups, never the dependency graph
            return prune_decoder(model, adapter, ctx, cfg)
        if cfg.importance == "activation":
            raise TechniqueError(
                "importance=activation is for decoder LLMs (model=hf_causal: MLP neurons and KV groups); "
                "use l2, l1 or taylor"
            )
        if is_transformer(model):  # encoder layers it knows, whatever library built the model
            return prune_transformer(model, adapter, ctx, cfg)
        return prune_channels(model, adapter, ctx, cfg)


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(ChannelPrune)
