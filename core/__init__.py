"""slimkit.core: the framework-free heart of slimkit.

It defines the hook specifications, the plugin manager, the abstract model adapter, technique,
target and tracker with the base of each one's typed config, the data containers, the run and its
report. It imports no ML framework.
"""

from .adapter import ModelAdapter, ModelConfig, ModelHandle, ParamCount
from .config import build_config, check_bool, check_int, check_list, check_number
from .data import DataConfig, DataSplits, Split
from .errors import (
    ConfigError,
    DataError,
    ModelError,
    PluginError,
    SlimkitError,
    TargetError,
    TechniqueError,
    TrackingError,
)
from .hookspecs import hookimpl, hookspec
from .registry import Registry
from .report import ModelMetrics, Report, StageResult
from .target import (
    BenchmarkRequest,
    Capabilities,
    Latency,
    Placement,
    Target,
    TargetConfig,
    compare_outputs,
    quant_preferences,
)
from .technique import StageContext, Technique, TechniqueConfig, check_choice, check_range
from .timing import Timings, interleave, time_runs
from .tracker import NullTracker, Tracker, TrackerConfig

__all__ = [
    "BenchmarkRequest",
    "Capabilities",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSplits",
    "Latency",
    "ModelAdapter",
    "ModelConfig",
    "ModelError",
    "ModelHandle",
    "ModelMetrics",
    "NullTracker",
    "ParamCount",
    "Placement",
    "PluginError",
    "Registry",
    "Report",
    "SlimkitError",
    "Split",
    "StageContext",
    "StageResult",
    "Target",
    "TargetConfig",
    "TargetError",
    "Technique",
    "TechniqueConfig",
    "TechniqueError",
    "Tracker",
    "TrackerConfig",
    "TrackingError",
    "build_config",
    "check_bool",
    "check_choice",
    "check_int",
    "check_list",
    "check_number",
    "check_range",
    "compare_outputs",
    "hookimpl",
    "hookspec",
    "quant_preferences",
    "time_runs",
    "interleave",
    "Timings",
]
