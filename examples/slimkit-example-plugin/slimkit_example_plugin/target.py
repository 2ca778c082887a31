"""An example slimkit target: ``example_cpu``, the built-in ``cpu`` target with a typed config of its own.

A target declares its options as a dataclass (here extending the ``cpu`` target's :class:`CpuConfig`):
slimkit stores it in Hydra's ConfigStore as the ``target=example_cpu`` option, so ``target.threads=abc``
fails when the config is composed, and ``__post_init__`` checks the values (one line, exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit.core import ConfigError, hookimpl
from slimkit.plugins.targets.cpu import CpuConfig, CpuTarget


@dataclass
class ExampleCpuConfig(CpuConfig):
    """The ``cpu`` target's options (threads, batch_sizes, warmup, repeats, runtimes, ...) with one
    thread and batch size 1 by default, plus ``label``: a name for the machine, kept in the report."""

    threads: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    label: str = "example"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.label, str) or not self.label.strip():
            raise ConfigError(f"label={self.label!r} must be a non-empty string; use e.g. label=laptop")


class ExampleCpuTarget(CpuTarget):
    """The host CPU, measured by slimkit's ``cpu`` target; only the config differs."""

    name = "example_cpu"
    description = "host CPU, one thread by default, with a machine label (example plugin)"
    Config = ExampleCpuConfig


@hookimpl
def slimkit_register_targets(registry: Any) -> None:
    registry.add_target(ExampleCpuTarget)
