"""slimkit.core: the framework-free heart of slimkit.

It defines the hook specifications, the plugin manager, the abstract model adapter, technique,
target and tracker, the data containers, the run and its report. It imports no ML framework.
"""

from .adapter import ModelAdapter, ModelHandle, ParamCount
from .data import DataSplits, Split
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
    compare_outputs,
    quant_preferences,
    target_capabilities,
)
from .technique import StageContext, Technique, TechniqueConfig, check_choice, check_range
from .tracker import NullTracker, Tracker

__all__ = [
    "BenchmarkRequest",
    "Capabilities",
    "ConfigError",
    "DataError",
    "DataSplits",
    "Latency",
    "ModelAdapter",
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
    "TargetError",
    "Technique",
    "TechniqueConfig",
    "TechniqueError",
    "Tracker",
    "TrackingError",
    "check_choice",
    "check_range",
    "compare_outputs",
    "hookimpl",
    "hookspec",
    "quant_preferences",
    "target_capabilities",
]
