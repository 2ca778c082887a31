"""The slimkit error hierarchy.

Every error a user can cause is a :class:`SlimkitError`: its message is one line that names the
problem, then the fix (``sparsity=1.5 is outside [0, 1); use e.g. 0.5``). The CLI prints it without a
traceback and exits with code 2; any other exception is a bug in slimkit or a plugin.
"""

from __future__ import annotations

from .secrets import redact_text


class SlimkitError(Exception):
    """Base class of errors caused by input: config, files, data, unsupported combinations."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller passed, and no password in it.
        super().__init__(redact_text(" ".join(str(message).split())))


class ConfigError(SlimkitError):
    """A config value is missing, of the wrong type, or out of range."""


class PluginError(SlimkitError):
    """A plugin is unknown, failed to load, or implements a hook wrongly."""


class ModelError(SlimkitError):
    """A model cannot be loaded, saved or run (missing file, wrong weights, bad factory)."""


class DataError(SlimkitError):
    """Data does not exist or does not fit the model."""


class TechniqueError(SlimkitError):
    """A technique cannot be applied to this model with this config."""


class TargetError(SlimkitError):
    """A target cannot run or measure the model (missing device, unsupported format)."""


class TrackingError(SlimkitError):
    """The tracking backend cannot be reached or written."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT: Ctrl-C; SIGTERM: ``kill``, a scheduler's cancel) stopped the run: it ends
    FAILED with this message and a partial report, like any failure."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(f"interrupted by {signal_name}")
        #: The signal's name.
        self.signal_name = signal_name
