"""The ``mlflow`` tracker: every run becomes an MLflow run, every stage a nested child run.

Config (the ``tracking`` group, :class:`MlflowConfig`; every key optional):

``uri``
    The tracking URI. Empty or ``null``: ``sqlite:///mlflow.db`` in the current directory
    (MLflow 3 refuses the old ``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE=true``).
    ``http(s)://...`` names a tracking server, which :meth:`MlflowTracker.check` pings before the
    run starts. ``$MLFLOW_TRACKING_URI`` is not read: MLflow sets it itself once a run has set a
    URI, which would carry one run's URI over to the next in the same process.
``experiment``
    The experiment, created if missing (default ``slimkit``).
``run_name``
    The parent run's name (default: MLflow picks one).
``log_model``
    Log the compressed model once, as the MLflow model ``model`` (default ``true``): the ONNX file in
    MLflow's ``onnx`` flavor with a signature and an input example (servable with ``mlflow models
    serve -m runs:/RUN_ID/model``), plus the ``pytorch`` flavor when the result is a torch module and
    the files that load it back (a Hugging Face directory's config and tokenizer); see
    :mod:`slimkit.plugins.tracking.model_logging`. ``false``: the model files are plain artifacts.
``register``
    A registered model name: the baseline and the compressed model become versions of it, tagged
    (role, pipeline, target, ISA, accuracy, accuracy drop, ratios) and the compressed version linked
    to its baseline version and run (default ``null``: nothing is registered). Needs ``log_model``.
``tags``
    Extra tags for the parent run, a mapping.
``artifact_location``
    Where a newly created experiment keeps its artifacts. Default: the server's choice, or for a
    SQLite URI ``mlruns/<experiment>`` beside the database file (rather than MLflow's ``./mlruns``
    in whatever the current directory is).

What is recorded:

- parent run: params = the resolved config flattened to dotted keys (``stages.0.sparsity``); tags
  ``pipeline``, ``target``, ``slimkit.version``, ``slimkit.run_dir``; metrics ``baseline_*``,
  ``compressed_*``, ``ratio_*``, ``accuracy_drop``, ``fidelity_*``, ``latency_noisy`` and
  ``latency_*ratio_spread`` (tags ``slimkit.latency_noisy`` ``true``/``false`` and, when true,
  ``slimkit.latency_note``: a speed ratio whose interleaved rounds disagree, see
  :attr:`Report.latency_noise`) and ``<stage>.<metric>``;
  artifacts under their kind (``report/``, ``log/``...), ``config.yaml`` and the logged model
  ``model`` (the compressed model's files are not logged a second time as artifacts); with
  ``register``, the tag ``registered`` (``NAME/VERSION``) and the report's section ``registry``.
- one child run per stage (tag ``mlflow.parentRunId``), named after the stage: params = its
  technique and technique config, metrics = the stage's metrics and ``seconds``, tag ``cached``,
  and the stage's artifacts.
- a failed run ends ``FAILED`` (an interrupted one too: ``error_type=Interrupted``) with tags
  ``error`` and ``error_type`` and whatever was measured before the failure; tag ``slimkit.process``
  names the process, so the next run in the store ends ``KILLED`` a run left ``RUNNING`` by a
  process that died (:meth:`MlflowTracker.reap_dead_runs`).

MLflow is driven through :class:`mlflow.MlflowClient` with explicit run ids, so no run is left on
MLflow's fluent active-run stack between runs in one process. Failing to log something optional
(an artifact, the model) only warns; under pytest it raises, as MLflow's own autologging does.

Importing this module does not import MLflow (about a second); it is imported when a run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from slimkit.core import ConfigError, SlimkitError, Tracker, TrackerConfig, TrackingError, hookimpl
from slimkit.core.process import process_token, token_dead
from slimkit.core.secrets import redact, redact_text

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from slimkit.core.registry import Registry
    from slimkit.core.report import Report, StageResult
    from slimkit.core.run import RunContext

T = TypeVar("T")

#: The tracking URI used when none is configured (resolved against the current directory).
DEFAULT_URI = "sqlite:///mlflow.db"
#: The parent run's tag naming the slimkit process that runs it (``host:pid:start``).
PROCESS_TAG = "slimkit.process"
#: The experiment used when none is configured.
DEFAULT_EXPERIMENT = "slimkit"
#: Longest param value logged; older MLflow servers refuse more (the full config is in config.yaml).
PARAM_VALUE_LIMIT = 500
#: Longest ``error`` tag value.
ERROR_TAG_LIMIT = 5000
#: Longest param, metric or tag key MLflow accepts.
KEY_LIMIT = 250
#: Seconds to wait for a tracking server's ``/health`` in :meth:`MlflowTracker.check`.
CHECK_TIMEOUT_S = 3.0

_PARAMS_PER_BATCH = 100  # MLflow's limit on params (and tags) in one log_batch
_METRICS_PER_BATCH = 1000  # and on metrics
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")
_PARENT_TAG = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
#: Artifact kinds that are the compressed model itself, logged once as the MLflow model ``model``:
#: ``onnx`` (the ONNX file), ``model`` (the framework's file: ``model.pt`` becomes the pytorch flavor)
#: and ``model_dir`` (a folder of files that load the model back: config, tokenizer).
MODEL_KINDS = ("model", "onnx", "model_dir")


@hookimpl
def slimkit_register_trackers(registry: Registry) -> None:
    """Register :class:`MlflowTracker` as ``tracking=mlflow``."""
    registry.add_tracker(MlflowTracker)


# -- helpers ----------------------------------------------------------------------------------------


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into ``{"a.b.c": "value"}`` with string values.

    Mappings nest with dots, lists holding mappings or lists by index (``stages.0.technique``);
    other lists are written as JSON. Empty mappings give ``"{}"`` so that their key shows. Secrets
    are ``***`` (:func:`slimkit.core.secrets.redact`: URL passwords, keys named like ``password``).
    """
    out: dict[str, str] = {}
    config = redact(config)

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            if not value and key:
                out[key] = "{}"
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping | list | tuple) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}.{i}" if key else str(i))
        elif isinstance(value, list | tuple):
            out[key] = json.dumps(list(value), default=str)
        else:
            out[key] = str(value)

    walk(config, prefix)
    return out


def clean_key(key: str) -> str:
    """``key`` made acceptable as an MLflow param, metric or tag name (bad characters become ``_``)."""
    key = _BAD_KEY_CHARS.sub("_", str(key)).replace("//", "/").strip("/")[:KEY_LIMIT]
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        key = "_" + key.replace("/", "_")
    return key[:KEY_LIMIT]


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | float):
            out[clean_key(key)] = float(value)
        else:
            try:  # numpy scalars and the like
                out[clean_key(key)] = float(value)
            except (TypeError, ValueError):
                continue
    return out


def report_metrics(report: Report | None) -> dict[str, float]:
    """The run-level metrics of ``report``: baseline, compressed, ratios, accuracy drop, fidelity, and
    the ``metrics`` mapping of any report section (``llm_token_agreement``...).

    Whatever is missing (a run that failed before the compressed model was measured) is left out.
    """
    if report is None:
        return {}
    out: dict[str, float] = {}
    if report.baseline is not None:
        out.update(report.baseline.flat("baseline"))
    if report.compressed is not None:
        out.update(report.compressed.flat("compressed"))
    for name, ratio in report.ratios.items():
        if ratio is not None:
            out[f"ratio_{name}"] = float(ratio)
    if report.accuracy_drop is not None:
        out["accuracy_drop"] = float(report.accuracy_drop)
    out.update(report.noise_metrics())
    for name, value in report.fidelity.items():
        if name == "per_output":
            for i, per in enumerate(value):
                out.update({f"fidelity_output{i}_{k}": v for k, v in per.items()})
        else:
            out[f"fidelity_{name}"] = value
    for name, section in report.sections.items():  # a plugin's numbers (the llm section): {name}_{key}
        if isinstance(section, Mapping) and isinstance(section.get("metrics"), Mapping):
            out.update({f"{name}_{k}": v for k, v in section["metrics"].items()})
    return _numeric(out)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _strict() -> bool:
    """Whether logging errors should raise instead of warn (under pytest, like MLflow autologging)."""
    return bool(os.environ.get("PYTEST_CURRENT_TEST"))


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, bool | int) or value is None:
        return bool(value)
    raise ConfigError(f"{name}={value!r} is not a boolean; use tracking.{name}=true or tracking.{name}=false")


def _is_file_store(uri: str) -> bool:
    """Whether ``uri`` names MLflow's file store: ``file:...`` or a plain (POSIX or Windows) path."""
    if uri.lower().startswith("file:"):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", uri):
        return True
    return ":" not in uri and uri.lower() not in ("databricks", "databricks-uc", "uc")


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI, None for an in-memory database."""
    rest = uri[len("sqlite://") :]
    if not rest.startswith("/"):  # sqlite:// is in-memory
        return None
    path = rest[1:].split("?", 1)[0]  # sqlite:///rel.db, sqlite:////abs.db
    if path in ("", ":memory:"):
        return None
    return Path(path)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` beside a SQLite store (other URIs: no lock), so
    that runs started together do not both create MLflow's tables (``table ... already exists``)."""
    path = _sqlite_path(uri) if uri.lower().startswith("sqlite:") else None
    try:
        import fcntl
    except ImportError:  # Windows: no flock; MLflow's own retry is all there is
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _error_message(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return str(error) or "interrupted by SIGINT (Ctrl-C)"
    text = str(error) if isinstance(error, SlimkitError) else f"{type(error).__name__}: {error}"
    return _truncate(redact_text(_one_line(text)) or type(error).__name__, ERROR_TAG_LIMIT)


# -- the tracker ------------------------------------------------------------------------------------


@dataclass
class MlflowConfig(TrackerConfig):
    """``tracking=mlflow``: the keys of the module docstring, with their defaults."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    log_model: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None
    register: str | None = None

    def __post_init__(self) -> None:
        self.log_model = _flag(self.log_model, "log_model")
        if not isinstance(self.tags, Mapping):
            raise ConfigError(f"tags must be a mapping, not {self.tags!r}; use e.g. tracking.tags={{team: ml}}")
        self.tags = {str(k): str(v) for k, v in self.tags.items()}
        self.register = str(self.register).strip() if self.register not in (None, "") else None
        if self.register and not self.log_model and "search.trial" in self.tags:
            self.register = None  # a search's trials log no model; the search run registers its result
        if self.register and not self.log_model:
            raise ConfigError(
                f"register={self.register!r} registers the logged model, but log_model is false; "
                "drop tracking.log_model=false or tracking.register"
            )
        if self.register and ("/" in self.register or ":" in self.register):
            raise ConfigError(f"register={self.register!r}: a registered model name has no '/' or ':'; use e.g. digits")


class MlflowTracker(Tracker):
    """Records a slimkit run in MLflow: a parent run for the run, a child run per stage.

    Config: :class:`MlflowConfig` (``uri``, ``experiment``, ``run_name``, ``log_model``, ``tags``,
    ``artifact_location``, ``register``; see the module docstring). Registered into the plugin manager for one
    run; its lifecycle hooks are methods.
    """

    name = "mlflow"
    description = "MLflow tracking: params, metrics, artifacts and the ONNX model (tracking.uri=...)"
    Config = MlflowConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        config: MlflowConfig = self.config
        #: The tracking URI this tracker writes to.
        self.uri: str = str(config.uri or f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}")
        #: The experiment's name.
        self.experiment: str = str(config.experiment or DEFAULT_EXPERIMENT)
        #: The parent run's name, or None to let MLflow pick one.
        self.run_name: str | None = str(config.run_name) if config.run_name else None
        #: Whether to log the compressed model as the MLflow model ``model``.
        self.log_model: bool = config.log_model
        #: The registered model the baseline and compressed model become versions of (None: none).
        self.register: str | None = config.register
        #: The model's files by artifact kind (:data:`MODEL_KINDS`), logged once at the end of the run.
        self._model_files: dict[str, Path] = {}
        #: The URI of the logged model (``models:/m-...``) once logged.
        self.model_uri: str | None = None
        #: What :meth:`_register` registered (``model``, ``baseline_version``, ``compressed_version``...).
        self.registered: dict[str, Any] = {}
        #: Extra tags of the parent run.
        self.tags: dict[str, str] = dict(config.tags)
        #: Artifact location of a newly created experiment (None: beside a SQLite file, or the
        #: server's choice).
        self.artifact_location: str | None = str(config.artifact_location) if config.artifact_location else None
        #: The experiment's id, once the run started.
        self.experiment_id: str | None = None
        self._client_obj: MlflowClient | None = None
        self._child_run_id: str | None = None
        self._start_failed = False

    # -- backend ------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`TrackingError` unless the tracking URI looks usable.

        A server (``http(s)://``) must answer within :data:`CHECK_TIMEOUT_S` seconds; a SQLite
        database's directory is created if missing; the file store needs ``MLFLOW_ALLOW_FILE_STORE``.
        MLflow itself is not imported.
        """
        uri = self.uri
        lowered = uri.lower()
        if lowered.startswith(("http://", "https://")):
            self._check_server(uri)
        elif lowered.startswith("sqlite:"):
            path = _sqlite_path(uri)
            if path is None:
                return
            parent = path.parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError(
                    f"cannot create the directory {str(parent)!r} of the MLflow database {uri}: "
                    f"{exc.strerror or exc}; set tracking.uri=sqlite:///<writable dir>/mlflow.db"
                ) from exc
            if not os.access(parent, os.W_OK):
                raise TrackingError(
                    f"the directory {str(parent)!r} of the MLflow database {uri} is not writable; "
                    "set tracking.uri=sqlite:///<writable dir>/mlflow.db"
                )
        elif _is_file_store(uri) and not _file_store_allowed():
            raise TrackingError(
                f"tracking.uri={uri} is MLflow's file store, which MLflow 3 disables; "
                f"use tracking.uri={DEFAULT_URI} or set MLFLOW_ALLOW_FILE_STORE=true"
            )

    @staticmethod
    def _check_server(uri: str) -> None:
        import urllib.error
        import urllib.request

        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            return  # it answered: reachable (auth and routing are MLflow's business)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise TrackingError(
                f"cannot reach MLflow tracking server at {uri} ({reason}); start it "
                f"(mlflow server --host 127.0.0.1 --port 5000) or set tracking.uri={DEFAULT_URI}"
            ) from exc

    def _client(self) -> MlflowClient:
        if self._client_obj is None:
            import logging

            from mlflow import MlflowClient

            # MLflow logs its database set-up at INFO; slimkit's terminal output says what matters.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)

            self._client_obj = MlflowClient(tracking_uri=self.uri)
        return self._client_obj

    def _soft(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn``; if it fails, warn that ``what`` could not be logged (raise under pytest)."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _strict():
                raise
            first = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            warnings.warn(
                f"MLflow: could not {what} (run {self.run_id}): {type(exc).__name__}: {first}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        # Redacted here too: a stage's technique config (search.storage) holds the real values.
        items = {clean_key(k): _truncate(str(v), PARAM_VALUE_LIMIT) for k, v in redact(dict(params)).items()}
        entities = [Param(k, v) for k, v in items.items()]
        for chunk in _chunks(entities, _PARAMS_PER_BATCH):
            self._client().log_batch(run_id, params=chunk)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entities = [Metric(k, float(v), now, 0) for k, v in _numeric(metrics).items()]
        for chunk in _chunks(entities, _METRICS_PER_BATCH):
            self._client().log_batch(run_id, metrics=chunk)

    def _log_path(self, run_id: str, path: Path, artifact_path: str | None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client().log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self._client().log_artifact(run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"no such artifact: {path}")

    def _artifact_location(self) -> str | None:
        """The artifact location for a new experiment: configured, beside a SQLite file, or None."""
        if self.artifact_location:
            return self.artifact_location
        if self.uri.lower().startswith("sqlite:"):
            path = _sqlite_path(self.uri)
            if path is not None:
                folder = re.sub(r"[^\w.-]", "_", self.experiment).strip(".") or "experiment"
                return (path.parent.resolve() / "mlruns" / folder).as_posix()
        return None

    def _experiment_id(self) -> str:
        """The id of the experiment :attr:`experiment`, created if missing."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment, artifact_location=self._artifact_location())
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # lost a race with another process
                    raise
                experiment = client.get_experiment_by_name(self.experiment)
                assert experiment is not None
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} at {self.uri} is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                "or set tracking.experiment=<another name>"
            )
        return experiment.experiment_id

    def _start_run(self, ctx: RunContext) -> str:
        """Set the tracking URI and experiment, create the parent run, log config params and tags."""
        import mlflow

        from slimkit import __version__

        spec = ctx.spec
        try:
            mlflow.set_tracking_uri(self.uri)
            with store_lock(self.uri):  # the first runs on a new database race its schema creation
                self.experiment_id = self._experiment_id()
            mlflow.set_experiment(experiment_id=self.experiment_id)
            tags = {
                "pipeline": str(getattr(spec, "pipeline_name", "") or ""),
                "target": _target_name(getattr(spec, "target", None)),
                "slimkit.version": __version__,
                "slimkit.run_dir": str(getattr(spec, "run_dir", "")),
                PROCESS_TAG: process_token(),
                **self.tags,
            }
            tags = {clean_key(k): v for k, v in redact(tags).items()}
            try:  # user, source and git commit, as mlflow.start_run records them
                from mlflow.tracking.context.registry import resolve_tags

                tags = resolve_tags(tags)
            except Exception:  # best effort only
                pass
            self._soft("end runs left RUNNING by killed processes", self.reap_dead_runs)
            run = self._client().create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"cannot start an MLflow run in experiment {self.experiment!r} at {self.uri}: "
                f"{type(exc).__name__}: {_one_line(str(exc))[:300]}; "
                "check tracking.uri and tracking.experiment"
            ) from exc
        self.run_id = run.info.run_id
        params = flatten_params(getattr(spec, "config", None) or {})
        self._soft("log the config as params", self._log_params, self.run_id, params)
        return self.run_id

    # -- lifecycle hooks ----------------------------------------------------------------------------

    @hookimpl
    def slimkit_run_start(self, ctx: RunContext) -> None:
        """Create the parent MLflow run and log the resolved config as params."""
        try:
            self._start_run(ctx)
        except BaseException:
            self._start_failed = True
            raise

    @hookimpl
    def slimkit_stage_end(self, ctx: RunContext, result: StageResult) -> None:
        """Record the stage as a finished child run with its config, metrics and artifacts."""
        if self.run_id is None:
            return
        self._soft(f"log stage {result.name!r}", self._log_stage, ctx, result)

    def _log_stage(self, ctx: RunContext, result: StageResult) -> None:
        client = self._client()
        assert self.run_id is not None and self.experiment_id is not None
        tags = {
            _PARENT_TAG: self.run_id,
            "cached": str(bool(result.cached)).lower(),
            "stage": result.name,
            "technique": result.technique,
        }
        child = client.create_run(self.experiment_id, tags=tags, run_name=result.name)
        self._child_run_id = child_id = child.info.run_id
        try:
            params = {"technique": result.technique, "index": str(result.index)}
            params.update(flatten_params(_stage_config(ctx, result)))
            self._log_params(child_id, params)
            self._log_metrics(child_id, {**result.metrics, "seconds": result.seconds})
            run_dir = Path(ctx.spec.run_dir)
            for kind, rel in result.artifacts.items():
                self._soft(f"log artifact {rel}", self._log_path, child_id, run_dir / rel, clean_key(kind))
            if result.info:
                self._soft("log stage info", client.log_dict, child_id, _jsonable(result.info), "info.json")
        except BaseException:
            client.set_terminated(child_id, "FAILED")
            self._child_run_id = None
            raise
        client.set_terminated(child_id, "FINISHED")
        self._child_run_id = None
        self._log_metrics(self.run_id, {f"{result.name}.{k}": v for k, v in result.metrics.items()})

    @hookimpl
    def slimkit_log_artifact(self, ctx: RunContext, path: Path, kind: str) -> None:
        """Log the file (or directory) ``path`` to the parent run under the artifact path ``kind``.

        The model's own files (kinds :data:`MODEL_KINDS`) are kept for the MLflow model logged at the
        end of the run; without ``log_model`` they are logged here, each file once (an ONNX result's
        ``model`` and ``onnx`` are one file), a ``model_dir`` under its own name."""
        if self.run_id is None:
            return
        path = Path(path)
        if kind in MODEL_KINDS:
            logged = {p.resolve() for p in self._model_files.values()}
            self._model_files[kind] = path
            if self.log_model or path.resolve() in logged:
                return
            if kind == "model_dir":
                kind = path.name
        self._soft(f"log artifact {path}", self._log_path, self.run_id, path, clean_key(kind))

    @hookimpl
    def slimkit_run_end(self, ctx: RunContext, report: Report) -> None:
        """Log the report's metrics, the config and the ONNX model; end the parent run FINISHED."""
        if self.run_id is None:
            return
        run_id = self.run_id
        ok = False
        try:
            self._soft("log the run metrics", self._log_metrics, run_id, report_metrics(report))
            if report.latency_noise["pairs"]:  # "true" with tag slimkit.latency_note "... noisy: re-run on a quiet ..."
                tags = {"slimkit.latency_noisy": str(report.latency_noise["noisy"]).lower()}
                for note in report.notes:
                    if note["kind"] == "noisy":
                        tags["slimkit.latency_note"] = note["message"]
                for key, value in tags.items():
                    self._soft("tag latency noise", self._client().set_tag, run_id, key, value)
            config = redact(getattr(ctx.spec, "config", None) or {})
            self._soft("log config.yaml", self._client().log_dict, run_id, _jsonable(config), "config.yaml")
            onnx_path = self._model_files.get("onnx") or Path(ctx.spec.run_dir) / "model.onnx"
            if self.log_model and onnx_path.is_file():
                info = self._soft("log the model", self._log_model, ctx, onnx_path)
                if info is None:  # not logged (warned): keep its files as plain artifacts
                    for kind, path in self._model_files.items():
                        self._soft(f"log artifact {path}", self._log_path, run_id, path, clean_key(kind))
                elif self.register:
                    self._soft(f"register the model as {self.register!r}", self._register, ctx, report, info)
            ok = True
        finally:
            self._soft("end the run", self._client().set_terminated, run_id, "FINISHED" if ok else "FAILED")

    def _log_model(self, ctx: RunContext, onnx_path: Path) -> Any:
        """Log the model once as the MLflow model ``model``; its ``ModelInfo``."""
        import mlflow

        from .model_logging import companion_files, log_model

        # Model.log resolves the tracking URI and experiment through MLflow's fluent state.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)
        assert self.run_id is not None
        info = log_model(
            run_id=self.run_id,
            onnx_path=onnx_path,
            torch_path=self._model_files.get("model"),
            companions=companion_files(self._model_files.get("model_dir")),
            data=getattr(ctx, "data", None),
            warn=lambda message: _warn_line(ctx, message),
        )
        self.model_uri = info.model_uri
        return info

    def _register(self, ctx: RunContext, report: Report, info: Any) -> None:
        """Register the baseline and the logged model as versions of :attr:`register`
        (:func:`~slimkit.plugins.tracking.model_logging.register`); tag the run, fill the report."""
        from .model_logging import register

        assert self.run_id is not None and self.register is not None
        spec = ctx.spec
        run_dir = Path(spec.run_dir)
        model_cfg = (getattr(spec, "config", None) or {}).get("model") or {}
        source = str(model_cfg.get("uri") or "") if model_cfg.get("adapter") == "mlflow" else ""
        self.registered = register(
            self._client(),
            self.register,
            run_id=self.run_id,
            model_info=info,
            report=report,
            pipeline=str(getattr(spec, "pipeline_name", "") or ""),
            target=_target_name(getattr(spec, "target", None)),
            baseline_onnx=run_dir / "baseline" / "model.onnx",
            compressed_onnx=self._model_files.get("onnx") or run_dir / "model.onnx",
            source_uri=source or None,
            data=getattr(ctx, "data", None),
        )
        reg = self.registered
        self._client().set_tag(self.run_id, "registered", f"{reg['model']}/{reg['compressed_version']}")
        report.sections["registry"] = dict(reg)
        log = getattr(ctx, "log", None)
        if callable(log):
            log(f"registered {reg['uri']} (compressed; baseline: version {reg['baseline_version']} of {reg['model']})")

    @hookimpl
    def slimkit_run_failed(self, ctx: RunContext, error: BaseException, report: Report | None) -> None:
        """End the run FAILED (interrupted ones too) with tags ``error`` and ``error_type`` and what was
        measured; if the failure came before the run started, create a run just to record it."""
        status = "FAILED"  # interrupted (SIGINT/SIGTERM) too: error_type Interrupted says so
        if self._child_run_id is not None:
            child, self._child_run_id = self._child_run_id, None
            self._soft("end the stage run", self._client().set_terminated, child, status)
        if self.run_id is None:
            if self._start_failed:  # run_start already reported why MLflow cannot be used
                return
            try:
                self._start_run(ctx)
            except Exception as exc:
                if _strict():
                    raise
                warnings.warn(
                    f"MLflow: could not record the failed run: {redact_text(str(exc))}", RuntimeWarning, stacklevel=2
                )
                return
            if report is not None and report.mlflow_run_id is None:
                report.mlflow_run_id = self.run_id
        run_id = self.run_id
        assert run_id is not None
        try:
            self._soft("tag the error", self._tag_error, run_id, error)
            self._soft("log the metrics measured", self._log_metrics, run_id, report_metrics(report))
        finally:
            self._soft("end the run", self._client().set_terminated, run_id, status)

    def reap_dead_runs(self) -> list[str]:
        """End ``KILLED`` every run of this store left ``RUNNING`` by a slimkit process of this host
        that no longer exists (SIGKILL, a crash, power loss), tagged ``error_type=Killed``; tidy its
        run folder (:func:`~slimkit.core.run.clean_dead_run`). Return the run ids ended."""
        from mlflow.entities import RunTag, ViewType

        from slimkit.core.run import clean_dead_run

        client = self._client()
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        if not experiments:
            return []
        runs = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
        ended = []
        for run in runs:
            token = run.data.tags.get(PROCESS_TAG)
            # A search trial (a child with its own process tag) is ended by the study, which knows more:
            # its heartbeats stopped (error_type WorkerLost).
            if not token or _PARENT_TAG in run.data.tags or not token_dead(token):
                continue
            reason = f"the slimkit process {token.split(':')[1]} ended without finishing the run (killed or crashed)"
            tags = [RunTag("error", reason), RunTag("error_type", "Killed")]
            stages = [
                r for r in runs if r.data.tags.get(_PARENT_TAG) == run.info.run_id and PROCESS_TAG not in r.data.tags
            ]
            for target in [run, *stages]:  # the run and its stage runs
                client.log_batch(target.info.run_id, tags=tags)
                client.set_terminated(target.info.run_id, "KILLED")
            run_dir = run.data.tags.get("slimkit.run_dir")
            if run_dir:
                clean_dead_run(Path(run_dir), reason, run.info.run_id)
            ended.append(run.info.run_id)
        return ended

    def mark_failed(self, run_id: str, reason: str) -> None:
        """End run ``run_id`` FAILED with tags ``error`` (``reason``) and ``error_type`` if it is still
        RUNNING (its process died); a run that ended meanwhile is left as it is."""
        from mlflow.entities import RunTag

        client = self._client()
        run = self._soft("read the run", client.get_run, run_id)
        if run is None or run.info.status != "RUNNING":
            return
        tags = [RunTag("error", _one_line(reason)), RunTag("error_type", "WorkerLost")]
        self._soft("tag the lost run", client.log_batch, run_id, tags=tags)
        self._soft("end the lost run", client.set_terminated, run_id, "FAILED")

    def _tag_error(self, run_id: str, error: BaseException) -> None:
        from mlflow.entities import RunTag

        kind = "Interrupted" if isinstance(error, KeyboardInterrupt) else type(error).__name__
        tags = [RunTag("error", _error_message(error)), RunTag("error_type", kind)]
        self._client().log_batch(run_id, tags=tags)


def _warn_line(ctx: Any, message: str) -> None:
    """A ``warning:`` line in the run's log (the terminal shows it), or a Python warning without one."""
    log = getattr(ctx, "log", None)
    if callable(log):
        log(f"warning: MLflow: {message}")
    else:
        warnings.warn(f"MLflow: {message}", RuntimeWarning, stacklevel=2)


def _stage_config(ctx: RunContext, result: StageResult) -> dict[str, Any]:
    """The technique config of the stage ``result`` came from, as a dict ({} if unknown)."""
    for stage in getattr(ctx.spec, "stages", None) or []:
        if getattr(stage, "name", None) != result.name:
            continue
        cfg = getattr(stage, "config", None)
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            return dataclasses.asdict(cfg)
        if isinstance(cfg, Mapping):
            return dict(cfg)
    return {}


def _target_name(target: Any) -> str:
    if isinstance(target, Mapping):
        return str(target.get("name", ""))
    return str(getattr(target, "name", target) or "")


def _jsonable(obj: Any) -> Any:
    """``obj`` with anything JSON or YAML cannot hold (paths, numpy scalars) turned into strings."""
    return json.loads(json.dumps(obj, default=str))
