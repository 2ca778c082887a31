"""``magnitude_prune``: unstructured magnitude pruning, global or per layer, in gradual steps.

At step ``k`` of ``steps`` the target sparsity is ``s * (1 - (1 - k/steps)**3)`` (the cubic schedule of
Zhu & Gupta, 2017) or ``s * k/steps`` (linear); the smallest-magnitude weights of the chosen layers
are masked with ``torch.nn.utils.prune`` and the model is fine-tuned ``finetune_epochs`` epochs with the
masks held (on the labels; on data without labels by distilling the outputs of the unpruned model, as
the stage info's ``note`` says); at the end the masks are made permanent (``prune.remove``), so saved and
exported models carry real zeros. Dense runtimes gain no speed from these zeros; files compress better (see the
``size (zipped)`` row of the report) and the sparse-execution technique turns them into speed.

Scores: ``score=normalized`` (default) ranks ``|w| / rms(output channel) / sqrt(fan_in)``, magnitudes
brought to the He-initialisation scale; it ignores per-output-channel scales, so a model and its
ONNX export with BatchNorm folded into the convolutions lose the same weights. ``score=magnitude``
ranks raw ``|w|`` (the classic rule; on a BN-folded ONNX graph it ranks the folded scales too).

Torch models are pruned by :mod:`slimkit.plugins.techniques.magnitude_prune.torch_backend`; ONNX models
(``model=onnx``) on their Conv/Gemm/MatMul weight initializers by
:mod:`slimkit.plugins.techniques.magnitude_prune.onnx_backend`, with the same counts, one-shot and
without fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class MagnitudePruneConfig(TechniqueConfig):
    """Config of :class:`MagnitudePrune`.

    sparsity: fraction of the selected weights set to zero, in [0, 1).
    scope: ``global`` ranks all selected weights together (layers end at different sparsities);
        ``layer`` prunes each layer to the same sparsity.
    steps: pruning steps (gradual pruning); fine-tuning runs after each.
    schedule: ``cubic`` (prunes fast first, then gently) or ``linear``.
    finetune_epochs: fine-tuning epochs after each step (0: one-shot, no training). Without labels in
        the training data the fine-tuning distils the outputs of the model before compression.
    lr, batch_size: fine-tuning learning rate (SGD, cosine) and batch size.
    layer_types: module class names whose ``weight`` is pruned.
    ignored_layers: module names kept dense (e.g. ``stem.0``, ``fc``).
    score: ``normalized`` (default): ``|w|`` divided by the root mean square of its output channel
        and by ``sqrt(fan_in)``, blind to per-channel scales such as BatchNorm folded into an ONNX
        graph, so torch and ONNX models prune alike; ``magnitude``: raw ``|w|``.
    pattern: ``unstructured`` (default), or ``2:4``: in every group of 4 consecutive weights along
        the input dimension (input channels of a convolution, per kernel position) the 2 largest are
        kept, the semi-structured sparsity that NVIDIA's sparse tensor cores run (``target=cuda
        sparsity=2:4``). Needs ``sparsity=0.5``; layers whose input size is not a multiple of 4 stay
        dense (listed in the stage info). Torch models only.
    """

    sparsity: float = 0.5
    scope: str = "global"
    score: str = "normalized"
    steps: int = 3
    schedule: str = "cubic"
    finetune_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    layer_types: list[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    ignored_layers: list[str] = field(default_factory=list)
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, example=0.5)
        check_choice("pattern", self.pattern, ("unstructured", "2:4"))
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ConfigError(
                f"pattern=2:4 keeps 2 of every 4 weights, so sparsity={self.sparsity} cannot hold; set sparsity=0.5"
            )
        check_choice("scope", self.scope, ("global", "layer"))
        check_choice("score", self.score, ("normalized", "magnitude"))
        check_choice("schedule", self.schedule, ("cubic", "linear"))
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1; use 1 for one-shot pruning")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs} must be >= 0; use 0 to skip fine-tuning")
        check_range("lr", self.lr, 0.0, 10.0, low_open=True, example=0.01)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1; use e.g. 64")
        if not self.layer_types:
            raise ConfigError("layer_types is empty; use e.g. [Conv2d, Linear]")


def schedule_sparsities(target: float, steps: int, schedule: str) -> list[float]:
    """Cumulative sparsity after each of ``steps`` steps."""
    out = []
    for k in range(1, steps + 1):
        frac = k / steps
        out.append(target * (1 - (1 - frac) ** 3) if schedule == "cubic" else target * frac)
    return out


def sparsity_plot(per_layer: dict[str, float], path: Path, title: str) -> Path:
    """A horizontal bar chart of per-layer sparsity, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_layer)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(range(len(names)), [per_layer[n] * 100 for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero weights (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class MagnitudePrune(Technique):
    """Unstructured magnitude pruning with gradual schedule and fine-tuning."""

    name = "magnitude_prune"
    description = "unstructured magnitude pruning (global or per layer, gradual, fine-tuned)"
    frameworks = ("torch", "onnx")
    Config = MagnitudePruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        cfg: MagnitudePruneConfig = self.config  # type: ignore[assignment]
        if adapter.name == "onnx":
            from .onnx_backend import prune

            if cfg.pattern != "unstructured":
                raise TechniqueError(
                    f"pattern={cfg.pattern} is implemented for torch models only; "
                    "prune the torch model before export, or use pattern=unstructured"
                )
            return prune(model, cfg, adapter, ctx)
        from .torch_backend import prune as prune_torch

        return prune_torch(model, cfg, adapter, ctx)


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(MagnitudePrune)
