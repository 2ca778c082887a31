"""slimkit: plugin-based, framework-agnostic model compression with measured results.

The Python API beside the ``slimkit`` CLI::

    import slimkit
    result = slimkit.compress(model, data, pipeline="default", target="cpu")
    result.report.ratios, result.report.accuracy_drop, result.model

Heavy frameworks are imported only when a run needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .pipelines.api import CompressionResult


def compress(model: Any = None, data: Any = None, **kwargs: Any) -> CompressionResult:
    """Compress ``model`` on ``data``; see :func:`slimkit.pipelines.api.compress`."""
    from .pipelines.api import compress as _compress

    return _compress(model, data, **kwargs)


__all__ = ["__version__", "compress"]
