"""``model=mlflow``: a model from MLflow as the run's input — a registered version or a run's model.

Model config (``model=mlflow``, :class:`MlflowModelConfig`)::

    uri: models:/NAME/VERSION    # or models:/NAME@ALIAS, models:/NAME/latest, runs:/RUN_ID/model,
                                 # runs:/RUN_ID/path/to/file.onnx (or .pt)
    tracking_uri: null           # the store to read: null = tracking.uri (conf/model/mlflow.yaml),
                                 # else sqlite:///mlflow.db in the current directory
    framework: auto              # auto | onnx | torch: which of the model's flavors to compress
    trust_pickle: false          # a torch pickle slimkit's restricted loader refuses needs this
    input_size: null             # the side of a square image input (data=digits follows it)

The model is downloaded with ``mlflow.artifacts.download_artifacts`` into a temporary folder and its
file handed to the existing adapter: the ``pytorch`` flavor's ``data/model.pth`` to ``torch`` (loaded
with :mod:`slimkit.plugins.torch.safe_load` unless ``trust_pickle``), the ``onnx`` flavor's
``model.onnx`` to ``onnx``. ``framework=auto`` takes the pytorch flavor when there is one (pruning and
distillation need torch), else the ONNX one. A plain file (``runs:/ID/model.onnx``) goes by its suffix.

Once loaded, the adapter *is* that adapter (its class becomes ``OnnxAdapter`` or ``TorchAdapter``), and
``model.adapter`` in the run's spec says so, so techniques, the stage cache and runs made from the
spec (search trials) see an ``onnx`` or ``torch`` model. ``tracking.register`` links a version
registered from such a run to the input version (:mod:`slimkit.plugins.tracking.model_logging`).

MLflow is imported when a model is loaded, not when this plugin is.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, ModelAdapter, ModelConfig, ModelError, ParamCount, hookimpl

FRAMEWORKS = ("auto", "onnx", "torch")
URI_SCHEMES = ("models:/", "runs:/")


@dataclass
class MlflowModelConfig(ModelConfig):
    """``model=mlflow``: a registered model version or a run's logged model (see the module docstring)."""

    adapter: str = "mlflow"
    uri: str | None = None
    tracking_uri: str | None = None
    framework: str = "auto"
    trust_pickle: bool = False
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ConfigError(f"framework={self.framework!r} is not one of {list(FRAMEWORKS)}; use e.g. auto")
        if self.uri is not None and not str(self.uri).startswith(URI_SCHEMES):
            raise ConfigError(
                f"uri={self.uri!r} is not an MLflow model URI; use models:/NAME/VERSION, models:/NAME@ALIAS "
                "or runs:/RUN_ID/model"
            )


def default_tracking_uri() -> str:
    """The store the tracker writes to when ``tracking.uri`` is null: ``mlflow.db`` in the current directory."""
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}"


def download(uri: str, tracking_uri: str, dst: Path) -> Path:
    """Download the model (or file) ``uri`` names from the store at ``tracking_uri`` into ``dst``;
    the local path. One-line :class:`ModelError` when MLflow cannot."""
    import logging

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from .model_logging import reading

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        with reading(tracking_uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
    except (MlflowException, OSError) as exc:
        text = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise ModelError(
            f"model.uri={uri} cannot be downloaded from {_masked(tracking_uri)} ({text}); check the name and "
            "version (mlflow models search / the MLflow UI) and model.tracking_uri (default: tracking.uri)"
        ) from exc
    return Path(local)


def _masked(uri: str) -> str:
    from slimkit.core.secrets import redact_text

    return redact_text(uri)


def pick(local: Path, framework: str, uri: str) -> tuple[str, Path]:
    """``(adapter name, file)`` of the downloaded model at ``local``: an MLflow model folder (its
    ``MLmodel`` flavors), a plain file (by suffix) or a folder holding one ONNX file."""
    if local.is_file():
        found = {".onnx": "onnx", ".pt": "torch", ".pth": "torch"}.get(local.suffix.lower())
        if found is None or framework not in ("auto", found):
            raise ModelError(
                f"model.uri={uri} is a {local.suffix or 'suffix-less'} file; give an ONNX (.onnx) or torch "
                "(.pt) file, or an MLflow model (runs:/RUN_ID/model)"
            )
        return found, local
    candidates: dict[str, Path] = {}
    mlmodel = local / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
        onnx_conf, torch_conf = flavors.get("onnx"), flavors.get("pytorch")
        if isinstance(onnx_conf, Mapping) and (local / str(onnx_conf.get("data", "model.onnx"))).is_file():
            candidates["onnx"] = local / str(onnx_conf.get("data", "model.onnx"))
        if isinstance(torch_conf, Mapping):
            pth = local / str(torch_conf.get("model_data", "data")) / "model.pth"
            if pth.is_file():  # the pickle format (pt2, an ExportedProgram, is no nn.Module)
                candidates["torch"] = pth
        names = ", ".join(sorted(flavors)) or "none"
    else:
        onnx_files = sorted(local.glob("*.onnx"))
        if len(onnx_files) == 1:
            candidates["onnx"] = onnx_files[0]
        names = "no MLmodel file"
    order = ("torch", "onnx") if framework == "auto" else (framework,)
    for name in order:
        if name in candidates:
            return name, candidates[name]
    raise ModelError(
        f"model.uri={uri} has no {'ONNX or pickled PyTorch' if framework == 'auto' else framework} model "
        f"(flavors: {names}); log it with the onnx flavor (mlflow.onnx.log_model) or the pytorch flavor "
        "(serialization_format='pickle'), or set model.framework"
    )


class MlflowModelAdapter(ModelAdapter):
    """Loads a model from MLflow, then becomes the adapter of its framework (``onnx`` or ``torch``).

    Every other method is only reached before :meth:`load` (never in a run): it raises.
    """

    name = "mlflow"
    suffixes = ()
    description = "a model from MLflow: a registered version (models:/NAME/VERSION) or a run's (runs:/ID/model)"
    Config = MlflowModelConfig

    def load(self, cfg: Mapping[str, Any]) -> Any:
        """Download ``model.uri``, become the ``onnx`` or ``torch`` adapter and load the file with it."""
        from slimkit.core.plugins import get_registry

        config: MlflowModelConfig = self.model_config(cfg)
        if not config.uri:
            raise ModelError("model.uri is not set; give a model: model=mlflow model.uri=models:/NAME/VERSION")
        tmp = Path(tempfile.mkdtemp(prefix="slimkit-mlflow-"))
        try:
            local = download(config.uri, config.tracking_uri or default_tracking_uri(), tmp)
            framework, path = pick(local, config.framework, config.uri)
            inner = get_registry().adapter(framework)
            # From here on this object is the framework's adapter: the run holds it, and every
            # technique, the stage cache and the export see an ordinary onnx or torch adapter.
            self.__class__ = inner  # type: ignore[assignment]
            self.__dict__.clear()
            inner.__init__(self)
            if isinstance(cfg, MutableMapping):  # spec.model: runs built from this spec load no model
                cfg["adapter"] = framework
            inner_cfg: dict[str, Any] = {"path": str(path)}
            if framework == "torch":
                inner_cfg["trust_pickle"] = config.trust_pickle
            try:
                return self.load(inner_cfg)
            except ModelError as exc:
                raise ModelError(f"model.uri={config.uri}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _unloaded(self) -> ModelError:
        return ModelError("model=mlflow: the model is not loaded yet (the adapter becomes onnx or torch on load)")

    def load_file(self, path: Path) -> Any:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()

    def save(self, model: Any, path: Path) -> None:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()

    def count_params(self, model: Any) -> ParamCount:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()

    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()

    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> None:
        """Not reached: a loaded model's adapter is ``onnx`` or ``torch``."""
        raise self._unloaded()


@hookimpl
def slimkit_register_adapters(registry: Any) -> None:
    """Register the ``mlflow`` model source (``model=mlflow``)."""
    registry.add_adapter(MlflowModelAdapter)
