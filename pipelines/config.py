"""Config: structured schemas for Hydra, composition, and turning a composed config into a RunSpec.

Schemas are registered in Hydra's ConfigStore so that a value of the wrong type fails when the
config is composed. Technique schemas come from the techniques' own ``Config`` dataclasses (one
source of truth for defaults); a technique from a third-party plugin that ships no YAML file gets its
config group option straight from its dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.core import ConfigError, PluginError, SlimkitError
from slimkit.core.registry import Registry
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
class TorchModelConfig:
    """``model=torch`` and the bundled torch models."""

    name: str = "torch"
    adapter: str = "torch"
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    path: str | None = None
    trust_pickle: bool = False
    input_size: int | None = None


@dataclass
class DigitsDataConfig:
    """``data=digits``: scikit-learn's digits."""

    name: str = "digits"
    size: int = 32
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    limit: int | None = None


@dataclass
class OnnxModelConfig:
    """``model=onnx``: an ONNX file from any exporter (external data files beside it)."""

    name: str = "onnx"
    adapter: str = "onnx"
    path: str | None = None
    input_size: int | None = None
    external_data: bool = False


@dataclass
class HfModelConfig:
    """``model=hf``: a local Hugging Face Transformers directory (no download)."""

    name: str = "hf"
    adapter: str = "hf"
    path: str | None = None
    task: str = "auto"
    dynamic_sequence: bool = True
    input_size: int | None = None


@dataclass
class NpzDataConfig:
    """``data=npz``: arrays keyed by the model's input names, optional integer labels."""

    name: str = "npz"
    path: str | None = None
    labels: str = "labels"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    num_classes: int | None = None


@dataclass
class RandomDataConfig:
    """``data=random``: random inputs typed and shaped like the model's (``path``: its ONNX file)."""

    name: str = "random"
    path: str | None = None
    samples: int = 256
    dims: dict[str, int] = field(default_factory=dict)
    int_range: list[int] = field(default_factory=lambda: [0, 100])
    ranges: dict[str, list[int]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    distribution: str = "normal"
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class CallableDataConfig:
    """``data=callable``: ``fn(**kwargs)`` returns DataSplits, (x, y) or a dict of arrays."""

    name: str = "callable"
    fn: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass
class CpuTargetConfig:
    """``target=cpu``: ONNX Runtime CPU EP and the framework's eager runtime."""

    name: str = "cpu"
    threads: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.0
    max_seconds: float = 10.0
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime", "torch"])
    graph_optimization: str = "all"
    isolate: bool = True


@dataclass
class CudaTargetConfig:
    """``target=cuda``: ONNX Runtime CUDA EP (TensorRT EP when present) and torch CUDA."""

    name: str = "cuda"
    device: int = 0
    threads: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.0
    max_seconds: float = 10.0
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime", "torch"])
    graph_optimization: str = "all"
    isolate: bool = True
    precision: str = "fp32"
    tensorrt: bool = True
    sparsity: str = "none"


@dataclass
class NpuTargetConfig:
    """``target=npu``: Qualcomm QNN HTP through onnxruntime-qnn (emulated on x86_64)."""

    name: str = "npu"
    htp_arch: int = 73
    soc_model: int = 0
    threads: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    warmup: int = 2
    repeats: int = 10
    min_seconds: float = 0.0
    max_seconds: float = 10.0
    isolate: bool = True
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    allow_fallback: bool = False
    context_binary: bool = False
    validation_samples: int = 128


@dataclass
class MlflowTrackingConfig:
    """``tracking=mlflow``."""

    name: str = "mlflow"
    uri: str | None = None
    experiment: str = "slimkit"
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)


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


def register_schemas(registry: Registry) -> None:
    """Store the schemas (and plugin techniques without YAML) in Hydra's ConfigStore, once."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    _register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="slimkit_schema", node=SlimkitConfig)
    cs.store(group="schema/pipeline", name="pipeline", node=PipelineConfig)
    cs.store(group="schema/model", name="torch", node=TorchModelConfig)
    cs.store(group="schema/data", name="digits", node=DigitsDataConfig)
    cs.store(group="schema/model", name="onnx", node=OnnxModelConfig)
    cs.store(group="schema/model", name="hf", node=HfModelConfig)
    cs.store(group="schema/data", name="npz", node=NpzDataConfig)
    cs.store(group="schema/data", name="random", node=RandomDataConfig)
    cs.store(group="schema/data", name="callable", node=CallableDataConfig)
    cs.store(group="schema/target", name="cpu", node=CpuTargetConfig)
    cs.store(group="schema/target", name="cuda", node=CudaTargetConfig)
    cs.store(group="schema/target", name="npu", node=NpuTargetConfig)
    cs.store(group="schema/tracking", name="mlflow", node=MlflowTrackingConfig)
    for name, tech in registry.techniques.items():
        cfg_cls = tech.Config
        if not dataclasses.is_dataclass(cfg_cls):
            raise PluginError(f"technique {name!r}: Config must be a dataclass; make it a TechniqueConfig subclass")
        try:
            node = cfg_cls(technique=name)
        except SlimkitError as exc:
            raise PluginError(f"technique {name!r}: its Config defaults are invalid ({exc})") from exc
        cs.store(group="schema/technique", name=name, node=node)
        if not _has_yaml("technique", name):
            cs.store(group="technique", name=name, node=node)
    _registered = True


_HYDRA_NOISE = re.compile(r"\s*(Set the environment variable HYDRA_FULL_ERROR=1.*|Config search path:.*)$")


def hydra_error_line(exc: BaseException) -> str:
    """Fold a Hydra/OmegaConf composition error into one line with a fix."""
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
        group = re.search(r"Could not find '([^/']+)/", first)
        g = group.group(1) if group else "the group"
        return f"{first}; available options for {g}: {', '.join(options)}"
    cause = exc.__cause__
    cause_lines = [ln.strip() for ln in str(cause).strip().splitlines()] if cause is not None else []
    full_key = next((ln.split(":", 1)[1].strip() for ln in cause_lines if ln.startswith("full_key:")), None)
    if first.startswith("Could not override"):
        key = full_key or (first.split("'")[1] if "'" in first else "?")
        why = f" ({cause_lines[0]})" if cause_lines else ""
        append = re.search(r"To append to your config use (\S+)", text)
        if append and cause_lines and cause_lines[0].endswith("is not in struct"):
            # A free-form mapping (model.kwargs, tracking.tags): new keys need Hydra's "+".
            return f"config key '{key}' does not exist yet{why}; to add it, use {append.group(1)}"
        return f"unknown config key '{key}'{why}; check the spelling with `slimkit --help`"
    if first.startswith("Error merging override") and cause_lines:
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
    return StageSpec(name=name, technique=tech, config=config)  # type: ignore[arg-type]


def build_spec(plain: dict[str, Any], registry: Registry, run_dir: Path) -> RunSpec:
    """Turn the resolved config into a validated :class:`RunSpec` (before any work starts)."""
    pipeline = plain.get("pipeline") or {}
    stages = [validate_stage(n, dict(p or {}), registry) for n, p in (pipeline.get("stages") or {}).items()]
    for group in ("model", "data", "target", "tracking"):
        if not isinstance(plain.get(group), dict):
            raise ConfigError(f"no {group} is configured; pick one with {group}=OPTION (see `slimkit --help`)")
    registry.target(plain["target"]["name"])
    registry.tracker(plain["tracking"].get("name", "none"))
    if plain["data"]["name"] != "python":  # "python": data passed as an object through the API
        registry.data_loader(plain["data"]["name"])
    registry.adapter(plain["model"].get("adapter", "torch"))
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
        config=plain,
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
