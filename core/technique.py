"""Techniques: one compression algorithm each, with a typed, validated config."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from .adapter import ModelAdapter
    from .data import DataSplits
    from .target import Target


@dataclass
class TechniqueConfig:
    """Base of technique configs. Subclasses add typed, defaulted fields and check ranges in
    ``__post_init__`` (call :func:`check_range` and friends), raising :class:`ConfigError`.

    ``technique`` names the registered technique the stage runs.
    """

    technique: str = ""


def check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = True,
    example: Any = None,
) -> None:
    """Raise a one-line :class:`ConfigError` unless ``low <= value < high`` (bounds as given)."""
    ok = not (isinstance(value, float) and math.isnan(value))
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        hint = f"; use e.g. {example}" if example is not None else ""
        raise ConfigError(f"{name}={value} is outside {lb}{low}, {high}{hb}{hint}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...] | list[Any]) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}; pick one of those")


@dataclass
class StageContext:
    """What a technique may use while it runs: data, seed, the models around it, the run's target.

    ``target`` is the run's :class:`~slimkit.core.target.Target` object: a stage asks it what it
    runs (``capabilities()``), times models on it (``measure()``) and validates on it; techniques
    never import a target module. ``log`` writes a line to the run's log (terminal, ``run.log``,
    the tracker). ``run`` is the running run (:class:`~slimkit.core.run.RunContext`) for the few
    techniques that start runs of their own (``search``); None outside a pipeline. ``metrics``,
    ``artifacts`` and ``info`` are filled by the technique and end up in the report, the stage's
    directory and the tracking backend.
    """

    stage: str
    seed: int
    data: DataSplits
    work_dir: Path
    baseline: Any = None
    baseline_adapter: ModelAdapter | None = None
    target: Target | None = None
    progress: Callable[[str, float, float | None], None] = lambda task, done, total: None
    log: Callable[[str], None] = lambda message: None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    example: Mapping[str, np.ndarray] | None = None
    run: Any = None

    @property
    def target_name(self) -> str:
        """The run's target's name (``cpu`` when the stage runs outside a pipeline without one)."""
        return self.target.name if self.target is not None else "cpu"

    def require_target(self, why: str) -> Target:
        """The run's target, or a one-line :class:`ConfigError` saying ``why`` it is needed."""
        if self.target is None:
            raise ConfigError(
                f"stage {self.stage!r} needs the run's target to {why}; run it in a pipeline "
                "(slimkit target=...) or give StageContext(target=...)"
            )
        return self.target


class Technique(ABC):
    """Abstract base of compression techniques.

    Subclasses set :attr:`name`, :attr:`frameworks` (adapter names they handle), :attr:`Config`
    (a :class:`TechniqueConfig` subclass) and implement :meth:`apply`, which returns a new model and
    leaves its input untouched. :attr:`output_framework` names the adapter of the model ``apply``
    returns when it differs from the input's (``search`` returns ONNX); None: the same adapter.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    frameworks: ClassVar[tuple[str, ...]] = ()
    output_framework: ClassVar[str | None] = None
    Config: ClassVar[type[TechniqueConfig]] = TechniqueConfig

    def __init__(self, config: TechniqueConfig) -> None:
        self.config = config

    @abstractmethod
    def apply(self, model: Any, adapter: ModelAdapter, ctx: StageContext) -> Any:
        """Return the compressed model. Must not modify ``model`` in place."""
