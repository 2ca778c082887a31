"""The model adapter: everything slimkit does with one framework's models goes through it.

An adapter loads a model from config or a file, saves it, runs it on numpy inputs and measures it
(parameters, MACs, size) and exports it to ONNX. Techniques receive the adapter so they can use the
framework-neutral parts (evaluation, export) without knowing the framework's loader details.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .data import Split


@dataclass(frozen=True)
class ModelHandle:
    """A model on disk: which framework reads it, where it is, and a fingerprint of its content.

    Stages pass handles from one to the next; the fingerprint (hash of the file, or of the
    producing stage's input and config) keys the stage cache.
    """

    framework: str
    path: Path
    fingerprint: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ParamCount:
    """Parameter counts: all parameters, and those that are not exactly zero."""

    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 0.0 if self.total == 0 else 1.0 - self.nonzero / self.total


@dataclass
class ModelConfig:
    """Base of model configs (the ``model`` config group). Subclasses add typed, defaulted fields
    (where the model is, how to build it) and check them in ``__post_init__`` (see
    :mod:`slimkit.core.config`).

    ``name`` names the model (``digits_cnn``, or the adapter's name); ``adapter`` the registered
    adapter that loads it.
    """

    name: str = ""
    adapter: str = ""


class ModelAdapter(ABC):
    """Abstract base of framework adapters (``torch``, ``onnx``, ...).

    Subclasses set :attr:`name` (used in ``model.adapter=``), :attr:`suffixes` (file endings they
    read) and :attr:`Config` (a :class:`ModelConfig` subclass: what :meth:`load` reads, with its
    defaults and checks; also the schema of ``model=`` options that use this adapter, and the
    ``model=NAME`` option itself when slimkit ships no YAML for it), and implement the abstract
    methods. Model objects are opaque to the core.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    #: True when a model object names files on disk rather than holding its weights (``llm_onnx``): a
    #: stage's result is then read back from the stage directory once that is in place.
    file_backed: ClassVar[bool] = False

    @abstractmethod
    def load(self, cfg: Mapping[str, Any]) -> Any:
        """Load the user's model as the ``model`` config group describes it (see :meth:`model_config`)."""

    def model_config(self, cfg: Mapping[str, Any]) -> ModelConfig:
        """The ``model`` config group ``cfg`` as a typed :attr:`Config`; one-line
        :class:`~slimkit.core.errors.ModelError` for an unknown key or a bad value."""
        from .config import build_config
        from .errors import ModelError

        return build_config(self.Config, cfg, group="model", error=ModelError, adapter=self.name, name=self.name)

    @abstractmethod
    def load_file(self, path: Path) -> Any:
        """Load a model this adapter saved with :meth:`save` (the stage cache reads its entries with it).

        It must not run code from the file (a cache folder may come from anyone): a file it cannot
        read that way raises, and the cache recomputes the stage."""

    @abstractmethod
    def save(self, model: Any, path: Path) -> None:
        """Write ``model`` to ``path`` (the caller makes the write atomic)."""

    @abstractmethod
    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the model on a batch of named numpy inputs and return its (first) output."""

    def predict_outputs(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of the model on a batch (a multi-output model's, in order). Default: :meth:`predict`'s."""
        return [self.predict(model, inputs)]

    @abstractmethod
    def count_params(self, model: Any) -> ParamCount:
        """Count all and non-zero parameters."""

    @abstractmethod
    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        """Multiply-accumulate operations for one forward pass on ``example`` (batch 1)."""

    @abstractmethod
    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> None:
        """Write an ONNX file for ``model`` with a dynamic batch dimension."""

    def seed(self, seed: int) -> None:
        """Seed the framework's random number generators (called before every stage)."""

    def fingerprint(self, model: Any) -> str:
        """A hash of the model's content; the default saves it to a temporary file and hashes that."""
        import tempfile

        from .files import sha256_file

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model{self.suffixes[0] if self.suffixes else ''}"
            self.save(model, path)
            return sha256_file(path)

    def layer_sparsity(self, model: Any) -> dict[str, float]:
        """Fraction of zero weights per prunable layer (empty if the adapter cannot tell)."""
        return {}

    def check_inputs(self, model: Any, split: Split) -> None:
        """Raise a one-line :class:`~slimkit.core.errors.DataError` naming the first of ``split``'s inputs
        that cannot feed ``model`` (name, dtype, rank, fixed dims).

        Called once before a run measures anything. The default checks nothing: a mismatch then
        shows as the model failing to run on the data.
        """

    def complete_feeds(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The feeds that run the ONNX file ``onnx_path`` (this adapter's export) on the data's ``inputs``.

        The run builds the target's benchmark examples and validation feeds with it. The default
        returns ``inputs`` as they are; an adapter whose ONNX graph takes inputs the data does not
        hold adds them (a decoder LM with KV cache: an empty past, so the target times a prefill of
        the data's length). Every array keeps the samples on its first axis.
        """
        return inputs

    def copy(self, model: Any) -> Any:
        """An independent copy of ``model`` (techniques never modify their input in place)."""
        import copy

        return copy.deepcopy(model)

    def evaluate(self, model: Any, split: Split, batch_size: int = 256) -> dict[str, float]:
        """Accuracy (when ``split`` has labels) from :meth:`predict`, batch by batch."""
        if split.labels is None:
            return {}
        correct = 0
        for inputs, labels in split.batches(batch_rows(split, batch_size)):
            out = self.predict(model, inputs)
            correct += int((np.argmax(out, axis=-1) == labels).sum())
        return {"accuracy": correct / max(len(split), 1)}

    def outputs(self, model: Any, split: Split, batch_size: int = 256) -> np.ndarray:
        """All outputs of ``model`` on ``split``, concatenated (for fidelity checks)."""
        return np.concatenate([self.predict(model, b) for b, _ in split.batches(batch_rows(split, batch_size))])

    def all_outputs(self, model: Any, split: Split, batch_size: int = 256) -> list[np.ndarray]:
        """Each output of ``model`` on ``split``, batches concatenated (fidelity judged per output)."""
        parts = [self.predict_outputs(model, b) for b, _ in split.batches(batch_rows(split, batch_size))]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []


#: Evaluation feeds at most this many bytes of input per batch (256 samples of 3x736x736 would be 1.7 GB).
BATCH_BYTES = 64 << 20


def batch_rows(split: Split, batch_size: int) -> int:
    """``batch_size``, fewer when that many samples would exceed :data:`BATCH_BYTES` of input."""
    per_row = sum(int(np.prod(v.shape[1:], dtype=np.int64)) * np.dtype(v.dtype).itemsize for v in split.inputs.values())
    return max(1, min(batch_size, BATCH_BYTES // max(per_row, 1)))
