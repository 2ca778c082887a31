"""Typed plugin configs: a plain mapping (one composed config group) in, the plugin's dataclass out.

Every plugin kind declares its options as a dataclass, the one place their defaults live:
techniques (:class:`~slimkit.core.technique.TechniqueConfig`), targets
(:class:`~slimkit.core.target.TargetConfig`), trackers (:class:`~slimkit.core.tracker.TrackerConfig`),
model adapters (:class:`~slimkit.core.adapter.ModelConfig`) and data sources
(:class:`~slimkit.core.data.DataConfig`). Its ``__post_init__`` checks values with the helpers
below (or :func:`~slimkit.core.technique.check_range` / ``check_choice``), raising a one-line
:class:`ConfigError` that names the field without its group (``repeats=0 must be >= 1; use e.g.
50``); :func:`build_config` adds the group (``target.repeats=0 ...``) and raises the group's error
class. The pipelines store the same dataclass in Hydra's ConfigStore, so a value of the wrong type
fails when the config is composed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError, SlimkitError

C = TypeVar("C")


def build_config(
    cls: type[C],
    cfg: Mapping[str, Any] | None,
    *,
    group: str,
    error: type[SlimkitError] = ConfigError,
    **defaults: Any,
) -> C:
    """``cls(**cfg)`` for the config dataclass ``cls``, with one-line errors of class ``error``.

    ``defaults`` fill keys that ``cfg`` lacks (e.g. ``name=``). None for a field that cannot be None
    (its annotation has no ``None``) means the field's default. A key ``cls`` has no field for, or
    a value its ``__post_init__`` refuses, raises ``error`` naming ``group`` (``target: cpu has no
    option foo; its options: ...``, ``target.repeats=0 must be >= 1; use e.g. 50``).
    """
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"{group}: {getattr(cls, '__name__', cls)!r} is not a dataclass; declare Config as one")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = set(fields)
    values = {**defaults}
    for key, value in dict(cfg or {}).items():
        field = fields.get(str(key))
        if value is None and field is not None and not _optional(field):
            continue
        values[str(key)] = value
    unknown = sorted(set(values) - known)
    if unknown:
        label = values.get("name") or cls.__name__
        options = ", ".join(sorted(known - {"name"})) or "none"
        raise error(f"{group}: {label} has no option {', '.join(unknown)}; its options: {options}")
    try:
        return cls(**values)
    except SlimkitError as exc:
        text = str(exc)
        message = text if text.startswith(f"{group}.") else f"{group}.{text}"
        if isinstance(exc, error) and message == text:
            raise
        raise error(message) from exc


def _optional(field: dataclasses.Field[Any]) -> bool:
    """Whether the field's annotation admits None (``str | None``, ``Optional[int]``, ``Any``)."""
    text = field.type if isinstance(field.type, str) else repr(field.type)
    return "None" in text or "Optional" in text or text in ("Any", "typing.Any")


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")  # numpy's too, without numpy


def check_int(name: str, value: Any, low: int, *, example: Any) -> int:
    """``value`` as an int, or a one-line :class:`ConfigError` unless it is an integer ``>= low``."""
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}; use e.g. {example}")
    if value < low:
        raise ConfigError(f"{name}={value} must be >= {low}; use e.g. {example}")
    return int(value)


def check_number(name: str, value: Any, low: float = 0.0, *, low_open: bool = False, example: Any) -> float:
    """``value`` as a float, or a one-line :class:`ConfigError` unless it is a number ``>= low``
    (``> low`` with ``low_open``)."""
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}={value!r} must be a number {bound}; use e.g. {example}")
    number = float(value)
    if math.isnan(number) or (number <= low if low_open else number < low):
        raise ConfigError(f"{name}={number} must be {bound}; use e.g. {example}")
    return number


def check_bool(name: str, value: Any, *, example: Any = "true") -> bool:
    """``value`` as a bool, or a one-line :class:`ConfigError` unless it is true or false."""
    if not _is_bool(value):
        raise ConfigError(f"{name}={value!r} must be true or false; use e.g. {example}")
    return bool(value)


def check_list(name: str, value: Any, *, example: Any, empty: bool = False) -> list[Any]:
    """``value`` as a list, or a one-line :class:`ConfigError` unless it is a sequence (not a string
    or mapping) with at least one item (any number with ``empty``)."""
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r} must be a list; use e.g. {example}")
    items = list(value)
    if not items and not empty:
        raise ConfigError(f"{name} is empty; use e.g. {example}")
    return items
