"""Config: structured schemas for Hydra, composition, and turning a composed config into a RunSpec.

Schemas are registered in Hydra's ConfigStore so that a value of the wrong type fails when the
config is composed. They come from the plugins' own ``Config`` dataclasses (one source of truth for
defaults): techniques, targets, trackers and model adapters declare ``Config`` on their class, data
sources pass ``config=`` to ``registry.add_data``. A plugin from a third party that ships no YAML
file gets its config group option (``technique=``, ``target=``, ``tracking=``, ``model=``,
``data=``) straight from its dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core import (
    ConfigError,
    DataConfig,
    DataError,
    ModelConfig,
    ModelError,
    PluginError,
    SlimkitError,
    TargetConfig,
    TargetError,
    TechniqueConfig,
    TrackerConfig,
    build_config,
)
from slimkit.core.registry import Registry
from slimkit.core.secrets import redact

if TYPE_CHECKING:  # slimkit.core.run (files, processes) is not needed to compose: `slimkit --help` skips it
    from slimkit.core.run import RunSpec, StageSpec

CONFIG_MODULE = "slimkit.conf"
CONFIG_NAME = "config"


@dataclass
class UiConfig:
    progress: bool = True
    quiet: bool = False


@dataclass
class SlimkitConfig:
    """The primary config. Groups (pipeline, model, ...) are typed by their own schemas."""

    seed: int = 0
    cache: bool = True
    cache_dir: str = ".slimkit/cache"
    eval_batch_size: int = 256
    ui: UiConfig = field(default_factory=UiConfig)
    pipeline: Any = None
    model: Any = None
    data: Any = None
    target: Any = None
    tracking: Any = None
    search: Any = None  # pipeline=search only (conf/search/, schema from the search plugin)


@dataclass
class PipelineConfig:
    """A pipeline: named stages in order, each ``{technique: NAME, **params}``."""

    name: str = "custom"
    description: str = ""
    stages: dict[str, Any] = field(default_factory=dict)


_registered = False


def _register_resolvers() -> None:
    """``${first:a,b,...}``: the first value that is not null (e.g. the model's input size or 32)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("first"):
        OmegaConf.register_new_resolver("first", lambda *values: next((v for v in values if v is not None), None))


def _has_yaml(group: str, name: str) -> bool:
    try:
        return importlib.resources.files(CONFIG_MODULE).joinpath(group, f"{name}.yaml").is_file()
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def _plugin_configs(registry: Registry) -> list[tuple[str, str, type, type, dict[str, str]]]:
    """(group, name, Config, base, what the node's identity fields are) of every registered plugin."""
    out: list[tuple[str, str, type, type, dict[str, str]]] = []
    for name, tech in registry.techniques.items():
        out.append(("technique", name, tech.Config, TechniqueConfig, {"technique": name}))
    for name, target in registry.targets.items():
        out.append(("target", name, target.Config, TargetConfig, {"name": name}))
    for name, tracker in registry.trackers.items():
        out.append(("tracking", name, tracker.Config, TrackerConfig, {"name": name}))
    for name, adapter in registry.adapters.items():
        out.append(("model", name, adapter.Config, ModelConfig, {"name": name, "adapter": name}))
    for name, data_cls in registry.data_configs.items():
        out.append(("data", name, data_cls, DataConfig, {"name": name}))
    return out


def _kind(group: str) -> str:
    return {"technique": "technique", "target": "target", "tracking": "tracker", "model": "model adapter"}.get(
        group, "data source"
    )


def register_schemas(registry: Registry) -> None:
    """Store every plugin's typed ``Config`` in Hydra's ConfigStore, once.

    Each registered technique, target, tracker, model adapter and data source (with ``config=``)
    gets ``schema/<group>/<name>`` (groups ``technique``, ``target``, ``tracking``, ``model``,
    ``data``), which the YAML files in ``conf/`` extend, and, when slimkit ships no YAML for it
    (a third-party plugin), the group option ``<group>=<name>`` itself.
    """
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    _register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="slimkit_schema", node=SlimkitConfig)
    cs.store(group="schema/pipeline", name="pipeline", node=PipelineConfig)
    for group, name, cfg_cls, base, ids in _plugin_configs(registry):
        if not dataclasses.is_dataclass(cfg_cls):
            raise PluginError(
                f"{_kind(group)} {name!r}: Config must be a dataclass; make it a {base.__name__} subclass"
            )
        try:
            node = cfg_cls(**ids)
        except SlimkitError as exc:
            raise PluginError(f"{_kind(group)} {name!r}: its Config defaults are invalid ({exc})") from exc
        _store_lazily(cs, f"schema/{group}", name, group, node)
        if not _has_yaml(group, name):
            _store_lazily(cs, group, name, group, node)
    _registered = True


def _store_lazily(cs: Any, store_group: str, name: str, group: str, node: Any) -> None:
    """Put ``node`` (a plugin's ``Config`` instance) in the ConfigStore as ``store_group/name``, made an
    OmegaConf node only when Hydra first loads it: a composition reads a few of the dozens of schemas,
    and converting them all up front took a quarter of ``slimkit --help``."""
    folder = cs.repo
    for part in store_group.split("/"):
        folder = folder.setdefault(part, {})
    folder[f"{name}.yaml"] = _lazy_config_node()(f"{name}.yaml", store_group, lambda: _open_mappings(group, node))


@functools.cache
def _lazy_config_node() -> type:
    """A subclass of Hydra's ``ConfigNode`` whose ``node`` is built on first read, then kept: Hydra's
    ``ConfigStore.load`` hands out a deep copy of it, so the kept node never changes."""
    from hydra.core.config_store import ConfigNode
    from omegaconf import OmegaConf

    class LazyConfigNode(ConfigNode):
        def __init__(self, name: str, group: str, make: Any) -> None:
            # Shared with the shallow copies ConfigStore.load makes, so the node is built once.
            self.__dict__.update(name=name, group=group, package=None, provider=None, _built=[], _make=make)

        @property  # type: ignore[override]
        def node(self) -> Any:
            if not self._built:
                self._built.append(OmegaConf.structured(self._make()))
            return self._built[0]

        @node.setter
        def node(self, value: Any) -> None:
            self.__dict__["_built"] = [value]

    return LazyConfigNode


def _open_mappings(group: str, node: Any) -> Any:
    """A data source's schema node whose mappings (``data.shapes``, ``data.dims``, ``data.ranges``,
    ``data.kwargs``) take new keys on the command line as documented, ``data.shapes={x: [3,736,736]}``
    or ``data.shapes.x=[3,736,736]``, with no ``+``: Hydra's struct mode refuses new keys in a
    mapping unless its node says otherwise. Values keep their types (a shape must be a list of ints)."""
    if group != "data":
        return node
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(node)
    for f in dataclasses.fields(node):
        if isinstance(getattr(node, f.name), dict):
            OmegaConf.set_struct(cfg[f.name], False)
    return cfg


_HYDRA_NOISE = re.compile(r"\s*(Set the environment variable HYDRA_FULL_ERROR=1.*|Config search path:.*)$")


def _did_you_mean(word: str, choices: Any) -> str | None:
    """The choice closest to ``word`` (``difflib``), or None when none is close."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key_line(exc: BaseException, key: str, override: str | None) -> str:
    """``unknown config key 'model.pth'; did you mean model.path=x?``: the keys of the level where the
    key is missing (the parent node OmegaConf names) are the candidates; no OmegaConf wording."""
    errors = [e for e in (exc.__cause__, exc) if getattr(e, "parent_node", None) is not None]
    parent = errors[0].parent_node if errors else None  # type: ignore[union-attr]
    keys = [str(k) for k in parent.keys() if not str(k).startswith("_")] if parent is not None else []
    bad = key.rsplit(".", 1)[-1]
    keys = [k for k in keys if k != "hydra" or key.startswith("hydra")]
    best = _did_you_mean(bad, keys)
    if best is None:
        where = f"keys under {key.rsplit('.', 1)[0]!r}" if "." in key else "top-level keys"
        listed = f" ({where}: {', '.join(keys)})" if keys else ""
        return f"unknown config key '{key}'{listed}; check the spelling with `slimkit --help`"
    fixed = key[: len(key) - len(bad)] + best
    if override and "=" in override:  # the whole override, corrected: model.pth=x -> model.path=x
        name, value = override.lstrip("+").split("=", 1)
        if name.startswith(key):
            return f"unknown config key '{key}'; did you mean {fixed}{name[len(key) :]}={value}?"
    return f"unknown config key '{key}'; did you mean '{fixed}'?"


def hydra_error_line(exc: BaseException) -> str:
    """Fold a Hydra/OmegaConf composition error into one line with a fix: a misspelt key or group
    option gets ``did you mean ...?`` (``difflib`` over the valid keys or options of that level)."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not _HYDRA_NOISE.match(ln)]
    first = lines[0] if lines else type(exc).__name__
    options = []
    if "Available options" in text:
        after = text.split("Available options", 1)[1].splitlines()[1:]
        for ln in after:
            if ln.startswith(("\t", "    ")) and ln.strip():
                options.append(ln.strip())
            elif ln.strip():
                break
    if options:
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", first)
        g, option = missing.groups() if missing else ("the group", "")
        best = _did_you_mean(option, options)
        top = first.startswith("In 'config':")  # chosen as group=option (else in a pipeline's defaults)
        hint = (f"did you mean {g}={best}? " if top else f"did you mean '{best}'? ") if best else ""
        problem = f"unknown option '{g}/{option}'" if missing else first
        return f"{problem}; {hint}available options for {g}: {', '.join(options)}"
    cause = exc.__cause__
    cause_lines = [ln.strip() for ln in str(cause).strip().splitlines()] if cause is not None else []
    full_key = next((ln.split(":", 1)[1].strip() for ln in cause_lines if ln.startswith("full_key:")), None)
    if first.startswith("Could not override"):
        key = full_key or (first.split("'")[1] if "'" in first else "?")
        append = re.search(r"To append to your config use (\S+)", text)
        if append and cause_lines and cause_lines[0].endswith("is not in struct"):
            # A free-form mapping (model.kwargs, tracking.tags): new keys need Hydra's "+".
            return f"config key '{key}' does not exist yet; to add it to this mapping, use {append.group(1)}"
        return _unknown_key_line(exc, key, append.group(1) if append else None)
    if first.startswith("Error merging override") and cause_lines:
        typed = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", cause_lines[0])
        override = first.removeprefix("Error merging override").strip()
        if typed and "=" in override:  # a value of the wrong type: say which type, in our words
            kind = {"Float": "a number", "Integer": "a whole number", "Boolean": "true or false"}.get(
                typed.group(2), typed.group(2).lower()
            )
            key = override.split("=", 1)[0]
            return f"{override} is not {kind}; give {key}=<{kind}> (see `slimkit --help`)"
        return f"{first}: {cause_lines[0]}; fix the value (see `slimkit --help`)"
    rest = [ln for ln in lines[1:] if not ln.startswith(("full_key", "object_type", "reference_type"))]
    extra = f" ({'; '.join(rest[:2])})" if rest else ""
    return f"{first}{extra}; fix the override (see `slimkit --help`)"


def to_plain(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (no Hydra node)."""
    from omegaconf import OmegaConf

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:
        raise ConfigError(hydra_error_line(exc)) from exc
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


def validate_stage(name: str, params: dict[str, Any], registry: Registry) -> StageSpec:
    """Build the technique config of one stage; raise one-line errors for bad values."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(params, dict) or "technique" not in params:
        raise ConfigError(
            f"stage {name!r} names no technique; set pipeline.stages.{name}.technique or use "
            f"technique@pipeline.stages.{name}=NAME"
        )
    tech_name = params["technique"]
    tech = registry.technique(tech_name)
    cfg_cls = tech.Config
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"pipeline.stages.{name}: {tech_name} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(sorted(known - {'technique'}))}"
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg_cls(technique=tech_name)), params)
        config = OmegaConf.to_object(merged)
    except SlimkitError as exc:
        raise ConfigError(f"pipeline.stages.{name}.{exc}") from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(f"pipeline.stages.{name}: {hydra_error_line(exc)}") from exc
    from slimkit.core.run import StageSpec

    return StageSpec(name=name, technique=tech, config=config)  # type: ignore[arg-type]


def validate_groups(plain: dict[str, Any], registry: Registry) -> None:
    """Check the ``target``, ``tracking``, ``data`` and ``model`` groups against their plugins' typed
    configs (unknown keys, values the ``Config`` refuses): one-line errors before any work starts.

    The plugin builds the same dataclass from the same mapping when the run uses it.
    """
    target = plain["target"]
    target_cls = registry.target(target["name"]).Config
    build_config(target_cls, target, group="target", error=TargetError)
    tracking = plain["tracking"]
    name = tracking.get("name", "none")
    build_config(registry.tracker(name).Config, tracking, group="tracking")
    data = plain["data"]
    if data["name"] != "python":  # "python": data passed as an object through the API
        registry.data_loader(data["name"])
        data_cls = registry.data_configs.get(data["name"])
        if data_cls is not None:
            build_config(data_cls, data, group="data", error=DataError)
    model = plain["model"]
    adapter = model.get("adapter", "torch")
    model_cls = registry.adapter(adapter).Config
    build_config(model_cls, model, group="model", error=ModelError, adapter=adapter)


def build_spec(plain: dict[str, Any], registry: Registry, run_dir: Path) -> RunSpec:
    """Turn the resolved config into a validated :class:`RunSpec` (before any work starts).

    ``RunSpec.config``, which is written and logged, is :func:`~slimkit.core.secrets.redact`-ed;
    ``model``, ``data``, ``target`` and ``tracking`` keep the real values, to connect with.
    """
    from slimkit.core.run import RunSpec

    pipeline = plain.get("pipeline") or {}
    stages = [validate_stage(n, dict(p or {}), registry) for n, p in (pipeline.get("stages") or {}).items()]
    for group in ("model", "data", "target", "tracking"):
        if not isinstance(plain.get(group), dict):
            raise ConfigError(f"no {group} is configured; pick one with {group}=OPTION (see `slimkit --help`)")
    validate_groups(plain, registry)
    seed = int(plain.get("seed", 0))
    cache_dir = Path(plain["cache_dir"]) if plain.get("cache") and plain.get("cache_dir") else None
    return RunSpec(
        run_dir=run_dir,
        seed=seed,
        model=dict(plain["model"]),
        data=dict(plain["data"]),
        target=dict(plain["target"]),
        tracking=dict(plain["tracking"]),
        stages=stages,
        cache_dir=cache_dir,
        eval_batch_size=int(plain.get("eval_batch_size", 256)),
        config=redact(plain),  # what the report, the tracker and logs see: no password (the groups keep them)
        pipeline_name=str(pipeline.get("name", "custom")),
    )


def compose(overrides: list[str] | None = None) -> Any:
    """Compose the config as the CLI would (for the Python API and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from slimkit.core.plugins import get_registry

    register_schemas(get_registry())
    gh = GlobalHydra.instance()
    if gh.is_initialized():
        gh.clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides or []))
    except SlimkitError:
        raise
    except Exception as exc:
        raise ConfigError(hydra_error_line(exc)) from exc
