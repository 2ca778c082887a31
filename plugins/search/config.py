"""The config of ``pipeline=search`` (the top-level ``search`` node, composed from ``conf/search/``).

One dataclass is the source of truth for the defaults and the range checks: it is the config of the
``search`` technique, stored by Hydra as ``schema/technique/search`` (so a wrong type fails when the
config is composed), and ``conf/pipeline/search.yaml`` hands the whole ``search`` node to the stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from slimkit.core import ConfigError, TechniqueConfig, check_choice, check_range

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random")
OBJECTIVES: tuple[str, ...] = ("accuracy_drop", "speedup", "latency_ms", "size_mb")
#: Objectives optuna maximizes (the others are minimized).
MAXIMIZE: frozenset[str] = frozenset({"speedup"})

#: The search space: each parameter and the values it may take, in the order the trial applies them.
#: A one-value list fixes a parameter; the first value is the "off" value where there is one.
DEFAULT_SPACE: dict[str, list[Any]] = {
    # architecture (only for the bundled ResNet family: distilled from the model into a new one)
    "width_mult": [1.0, 0.75, 0.5],
    "depth": [0, 2, 1],  # residual blocks per stage; 0 keeps the model's own depth
    # depthwise-separable swap of the k x k convs
    "depthwise": [False, True],
    # structured channel pruning (ratio of channels removed)
    "channel_ratio": [0.0, 0.25, 0.5, 0.625],
    # low-rank factorisation (rank as a fraction of min(m, n); 0 is off)
    "rank_ratio": [0.0, 0.5],
    # unstructured magnitude pruning
    "sparsity": [0.0, 0.5, 0.8],
    # weight clustering (values per tensor; 0 is off)
    "n_clusters": [0, 32],
    # quantization mode (none: stay float), weight bits and layers kept float
    "quant_mode": ["none", "static", "dynamic"],
    "weight_bits": [8],
    "exclude": ["", "last"],  # "first"/"last": the first/last weight layer; or quantize exclude patterns
}

#: Factories whose ``width``/``blocks`` keyword arguments the architecture part of the search scales.
RESNET_FACTORIES: tuple[str, ...] = ("slimkit.plugins.torch.zoo:digits_resnet",)

_STUDY_NAME = re.compile(r"^[\w.\-]{1,100}$")


@dataclass
class SearchConfig(TechniqueConfig):
    """Config of the ``search`` technique (``search.*`` on the command line).

    n_trials: trials that ran (complete or failed) the study should hold; a re-run with the same study
        continues it up to that number, a larger number adds trials. A repeat of parameters already
        tried is recorded as pruned and does not count (trials are deterministic).
    timeout_s: stop starting trials after this many seconds of this worker (null: no limit).
    study: the optuna study name; workers that share a storage and a study name share the study.
    storage: optuna RDB storage URL: ``sqlite:///study.db`` (default, relative to the current
        directory, next to ``mlflow.db``) or ``postgresql://user:pass@host:port/db`` for many workers.
    sampler: ``tpe`` (multi-objective TPE), ``nsga2`` or ``random``.
    startup_trials: random trials before TPE models the results (NSGA-II: its population size).
    objectives: what the Pareto front trades off: two or more of ``accuracy_drop`` (min), ``speedup``
        (max, baseline p50 latency over the trial's, both measured in the trial), ``latency_ms`` (min),
        ``size_mb`` (min, the ONNX file).
    max_accuracy_drop, min_speedup, max_latency_ms, max_size_mb: constraints (null: none), measured on
        the target; the best feasible trial (highest speedup, then lowest accuracy drop) is the result.
    space: ``{parameter: [values]}`` overriding :data:`DEFAULT_SPACE` (a one-value list fixes it).
    epochs: training epochs of each trial stage that trains (distillation, fine-tuning); keep it small.
    calibration_samples: quantization calibration samples per trial.
    trial_target: target settings for trials (merged over ``target``): fewer batch sizes and repeats.
    heartbeat_s, grace_s: optuna heartbeat interval and the silence after which another worker marks a
        trial of a dead worker failed.
    seed_pipelines: names in ``seeds`` whose pipelines run first, as trials of their own, before any
        sampled trial (once per study): the hand-made recipes are on the front unless something
        dominates them, so the search's result is at least as good as each. ``conf/search/default.yaml``
        names ``default``, ``structured`` and ``quantize``; ``[]``: none.
    seeds: ``{name: pipeline config}``, composed from ``conf/pipeline/`` by ``conf/search/default.yaml``
        (the stages run verbatim, with the training budgets of the hand-made pipelines).
    """

    n_trials: int = 12
    timeout_s: float | None = None
    study: str = "slimkit-search"
    storage: str = "sqlite:///study.db"
    sampler: str = "tpe"
    startup_trials: int = 6
    objectives: list[str] = field(default_factory=lambda: ["accuracy_drop", "speedup"])
    max_accuracy_drop: float | None = 1.0
    min_speedup: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    space: dict[str, Any] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SPACE.items()})
    epochs: int = 1
    calibration_samples: int = 64
    trial_target: dict[str, Any] = field(
        default_factory=lambda: {"batch_sizes": [1], "runtimes": ["onnxruntime"], "warmup": 5, "repeats": 30}
    )
    heartbeat_s: int = 10
    grace_s: int = 60
    seed_pipelines: list[str] = field(default_factory=list)
    seeds: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"search.n_trials={self.n_trials} must be >= 1; use e.g. 12")
        if self.timeout_s is not None:
            check_range("search.timeout_s", self.timeout_s, 0.0, 1e9, low_open=True, example=600)
        if not _STUDY_NAME.match(str(self.study)):
            raise ConfigError(
                f"search.study={self.study!r} is not a valid study name; use letters, digits, '.', '-', '_'"
            )
        storage = str(self.storage)
        if not storage.startswith(("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")):
            raise ConfigError(
                f"search.storage={storage!r} is not an optuna RDB URL; use sqlite:///study.db or "
                "postgresql://user:password@host:5432/db"
            )
        check_choice("search.sampler", self.sampler, SAMPLERS)
        if self.startup_trials < 1:
            raise ConfigError(f"search.startup_trials={self.startup_trials} must be >= 1; use e.g. 6")
        if len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(
                f"search.objectives={list(self.objectives)} needs two or more different objectives; "
                "use e.g. [accuracy_drop,speedup]"
            )
        for o in self.objectives:
            check_choice("search.objectives", o, OBJECTIVES)
        if self.max_accuracy_drop is not None:
            check_range("search.max_accuracy_drop", self.max_accuracy_drop, 0.0, 100.0, high_open=False, example=1.0)
        if self.min_speedup is not None:
            check_range("search.min_speedup", self.min_speedup, 0.0, 1e6, low_open=True, example=1.5)
        if self.max_latency_ms is not None:
            check_range("search.max_latency_ms", self.max_latency_ms, 0.0, 1e9, low_open=True, example=5.0)
        if self.max_size_mb is not None:
            check_range("search.max_size_mb", self.max_size_mb, 0.0, 1e9, low_open=True, example=1.0)
        unknown = sorted(set(self.space) - set(DEFAULT_SPACE))
        if unknown:
            raise ConfigError(
                f"search.space has no parameter {', '.join(unknown)}; its parameters: {', '.join(DEFAULT_SPACE)}"
            )
        for name, values in self.space.items():
            if not isinstance(values, list | tuple) or not values:
                raise ConfigError(
                    f"search.space.{name}={values!r} is not a non-empty list; use e.g. "
                    f"search.space.{name}=[{','.join(str(v) for v in DEFAULT_SPACE[name][:2])}]"
                )
        if self.epochs < 0:
            raise ConfigError(f"search.epochs={self.epochs} must be >= 0; use e.g. 1")
        if self.calibration_samples < 1:
            raise ConfigError(f"search.calibration_samples={self.calibration_samples} must be >= 1; use e.g. 64")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise ConfigError(
                f"search.heartbeat_s={self.heartbeat_s}, search.grace_s={self.grace_s}: need heartbeat_s >= 1 and "
                "grace_s > heartbeat_s; use e.g. heartbeat_s=10 grace_s=60"
            )

        missing = [n for n in self.seed_pipelines if n not in self.seeds]
        if missing:
            raise ConfigError(
                f"search.seed_pipelines names {', '.join(map(repr, missing))}, which is not in search.seeds "
                f"(composed: {', '.join(sorted(self.seeds)) or 'none'}); compose it with "
                f"+pipeline@search.seeds.{missing[0]}={missing[0]}, or drop it from search.seed_pipelines"
            )
        for name in self.seed_pipelines:
            stages = (self.seeds[name] or {}).get("stages") if isinstance(self.seeds[name], dict) else None
            if not isinstance(stages, dict) or not stages:
                raise ConfigError(
                    f"search.seeds.{name} has no stages; compose a pipeline there (+pipeline@search.seeds.{name}=NAME)"
                    " or drop it from search.seed_pipelines"
                )

    def full_space(self) -> dict[str, list[Any]]:
        """:data:`DEFAULT_SPACE` with this config's ``space`` entries replacing the defaults."""
        return {k: list(self.space.get(k, v)) for k, v in DEFAULT_SPACE.items()}

    def constraints(self) -> dict[str, float]:
        """The constraints that are set: ``{name: bound}``."""
        named = {
            "max_accuracy_drop": self.max_accuracy_drop,
            "min_speedup": self.min_speedup,
            "max_latency_ms": self.max_latency_ms,
            "max_size_mb": self.max_size_mb,
        }
        return {k: float(v) for k, v in named.items() if v is not None}
