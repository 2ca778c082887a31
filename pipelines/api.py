"""The Python API: ``slimkit.compress`` runs the same pipelines as the CLI, from a notebook or script."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataSplits, Split
from slimkit.core.report import Report


@dataclass
class CompressionResult:
    """What :func:`compress` returns: the report, the compressed model and where files went."""

    report: Report
    model: Any
    adapter: Any
    run_dir: Path

    @property
    def ratios(self) -> dict[str, float | None]:
        return self.report.ratios

    @property
    def accuracy_drop(self) -> float | None:
        return self.report.accuracy_drop

    def _repr_markdown_(self) -> str:  # notebooks render the report table
        return self.report.to_markdown()


def arrays_to_splits(
    x: np.ndarray | Mapping[str, np.ndarray],
    y: np.ndarray | None,
    seed: int,
    name: str = "arrays",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DataSplits:
    """Split in-memory arrays into train/val/test (shuffled with ``seed``)."""
    inputs = {"input": np.asarray(x)} if not isinstance(x, Mapping) else {k: np.asarray(v) for k, v in x.items()}
    n = len(next(iter(inputs.values())))
    if n < 10:
        raise ConfigError(f"data has {n} samples; give at least 10 to split into train/val/test")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(n * test_fraction))
    n_val = max(1, int(n * val_fraction))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}

    def split(ix: np.ndarray) -> Split:
        return Split({k: v[ix] for k, v in inputs.items()}, None if y is None else np.asarray(y)[ix])

    classes = None if y is None else int(np.asarray(y).max()) + 1
    return DataSplits(name=name, num_classes=classes, **{k: split(v) for k, v in parts.items()})


def compress(
    model: Any = None,
    data: Any = None,
    *,
    pipeline: str = "default",
    target: str = "cpu",
    tracking: str | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    quiet: bool = True,
    **params: Any,
) -> CompressionResult:
    """Compress ``model`` on ``data`` with a named pipeline and measure it on ``target``.

    model: an ``nn.Module``, or the name of a model config option (``"digits_resnet"``), or None for
        the config's default.
    data: a :class:`DataSplits`, an ``(x, y)`` tuple of arrays (split 70/10/20 with the seed), the name
        of a data option (``"digits"``), or None for the default.
    overrides: Hydra overrides as on the command line (``["pipeline.stages.prune.ratio=0.3"]``).
    params: more overrides as keywords, ``__`` standing for ``.``:
        ``compress(m, d, pipeline__stages__prune__ratio=0.3)``.

    Returns a :class:`CompressionResult`; raises a :class:`~slimkit.core.SlimkitError` for bad input.
    """
    from .config import compose, to_plain
    from .run import run_config

    ov = [f"pipeline={pipeline}", f"target={target}"]
    if tracking is not None:
        ov.append(f"tracking={tracking}")
    if isinstance(model, str):
        ov.append(f"model={model}")
        model = None
    if isinstance(data, str):
        ov.append(f"data={data}")
        data = None
    if quiet:
        ov.append("ui.quiet=true")
    ov += list(overrides or [])
    ov += [f"{k.replace('__', '.')}={_hydra_value(v)}" for k, v in params.items()]
    cfg = compose(ov)
    plain = to_plain(cfg)
    if model is not None:
        plain["model"] = {"name": type(model).__name__, "adapter": _adapter_for(model)}
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ConfigError("data=(x, y) expects two arrays; pass labels as None for unlabeled data")
        data = arrays_to_splits(data[0], data[1], int(plain.get("seed", 0)))
    if data is not None and not isinstance(data, DataSplits):
        raise ConfigError(
            f"data of type {type(data).__name__} is not supported; pass DataSplits, (x, y) arrays or a data option name"
        )
    if data is not None:
        plain["data"] = {**data.describe(), "name": "python", "dataset": data.name}
    if run_dir is None:
        run_dir = Path("outputs") / "api" / time.strftime("%Y-%m-%d_%H-%M-%S")
        n = 0
        while run_dir.exists():
            n += 1
            run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{n}")
    runner = run_config(plain, Path(run_dir), model=model, data=data)
    return CompressionResult(report=runner.report, model=runner.model, adapter=runner.adapter, run_dir=Path(run_dir))


def _adapter_for(model: Any) -> str:
    """The adapter for an in-memory model: the first plugin whose ``slimkit_adapter_for`` answers."""
    from slimkit.core.plugins import get_plugin_manager, get_registry

    name = get_plugin_manager().hook.slimkit_adapter_for(model=model)
    if name is None:
        adapters = ", ".join(sorted(get_registry().adapters))
        raise ConfigError(
            f"no adapter for a model of type {type(model).__module__}.{type(model).__name__}; pass a model one of "
            f"the installed adapters handles ({adapters}: a torch.nn.Module or an onnx.ModelProto)"
        )
    return name


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)
