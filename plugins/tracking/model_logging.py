"""The compressed model in MLflow: logged once, servable, and registered with its lineage.

Used by the ``mlflow`` tracker (:mod:`slimkit.plugins.tracking.mlflow`) at the end of a run:

- :func:`log_model` logs the run's model once, as the MLflow model ``model`` (``runs:/RUN_ID/model``):
  the ONNX file through MLflow's ``onnx`` flavor, exactly as ``mlflow.onnx.log_model`` does, with a
  signature and an input example (one sample of the run's test data, else zeros of the graph's
  input shapes) so that ``mlflow models serve -m runs:/RUN_ID/model`` answers predictions; plus the
  ``pytorch`` flavor (``data/model.pth``, plain ``pickle``, so slimkit's restricted loader reads it
  back) when the compressed model is a torch module; plus the files that load the model back beside
  ``model.onnx`` (a Hugging Face directory's ``config.json`` and tokenizer files).
- :func:`register` makes the baseline and the compressed model versions of one registered model,
  tagged and linked (see :func:`register`).

MLflow is imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import files

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models.model import ModelInfo

    from slimkit.core.data import DataSplits
    from slimkit.core.report import Report

#: The name of the logged model: ``runs:/RUN_ID/model``.
MODEL_NAME = "model"
#: The name of the baseline's logged model (only when ``tracking.register`` needs a baseline version).
BASELINE_NAME = "baseline"
#: ONNX files at least this big are logged with their tensors in external data files.
EXTERNAL_DATA_BYTES = 1_800_000_000
#: Files MLflow writes into a model directory: a companion file of the same name is not copied.
_MLFLOW_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "constraints.txt",
    "input_example.json",
    "serving_input_example.json",
    "registered_model_meta",
    "data",
}
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?(?:/.*)?$")


# -- the example and the signature --------------------------------------------------------------------


def model_example(onnx_path: Path, data: DataSplits | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One input sample for the ONNX model at ``onnx_path`` and its outputs (ONNX Runtime, CPU).

    The sample is the first of ``data``'s test split (as many as a fixed batch dimension asks), matched
    to the graph's inputs by name (one input and one array: by position), cast to the inputs' types;
    without data (or when the data does not match), zeros of the inputs' shapes with 1 for every
    symbolic dimension.
    """
    import onnxruntime as ort

    from slimkit.core.data import match_inputs

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    feeds: dict[str, np.ndarray] = {}
    leading = {i.shape[0] if isinstance(i.shape[0], int) and i.shape[0] > 0 else None for i in inputs if i.shape}
    batch = leading.pop() if len(leading) == 1 and None not in leading else 1  # a fixed batch (fix_shapes)
    sample = data.test.example(batch) if data is not None else {}
    pairs = match_inputs([i.name for i in inputs], list(sample)) if sample else None
    for info in inputs:
        dtype = _ORT_TYPES.get(info.type, np.float32)
        key = dict(pairs).get(info.name) if pairs else None
        if key is not None:
            feeds[info.name] = np.ascontiguousarray(np.asarray(sample[key]).astype(dtype, copy=False))
        else:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (info.shape or [])]
            feeds[info.name] = np.zeros(shape, dtype=dtype)
    names = [o.name for o in session.get_outputs()]
    return feeds, dict(zip(names, session.run(names, feeds), strict=True))


# -- logging --------------------------------------------------------------------------------------------


def _save_model(
    path: str,
    mlflow_model: Any,
    onnx_model: Any,
    torch_model: Any = None,
    companions: tuple[Path, ...] = (),
    **kwargs: Any,
) -> None:
    """The flavor's ``save_model``: ``mlflow.onnx.save_model``, then the ``pytorch`` flavor and the
    companion files (called by :meth:`mlflow.models.Model.log`)."""
    import mlflow.onnx

    kwargs.pop("validate_serving_input", None)  # Model.log's own option, not the flavor's
    mlflow.onnx.save_model(onnx_model, path, mlflow_model=mlflow_model, **kwargs)
    root = Path(path)
    if torch_model is not None:
        _add_pytorch_flavor(root, mlflow_model, torch_model)
    for src in companions:
        dst = root / src.name
        if src.name in _MLFLOW_FILES or dst.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    if torch_model is not None or companions:
        mlflow_model.save(str(root / "MLmodel"))


def _add_pytorch_flavor(root: Path, mlflow_model: Any, torch_model: Any) -> None:
    """Save ``torch_model`` with ``mlflow.pytorch`` (plain pickle) and add its flavor to ``mlflow_model``."""
    import logging
    import pickle

    import mlflow.pytorch
    from mlflow.models import Model

    flavor_model = Model()
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "torch"
        torch_log = logging.getLogger("mlflow.pytorch")
        level = torch_log.level
        torch_log.setLevel(logging.ERROR)  # its "pickle needs caution" notice: slimkit reads it restricted
        try:
            mlflow.pytorch.save_model(
                torch_model,
                str(saved),
                mlflow_model=flavor_model,
                pickle_module=pickle,
                serialization_format="pickle",
                signature=False,
                pip_requirements=[],
            )
        finally:
            torch_log.setLevel(level)
        conf = dict(flavor_model.flavors["pytorch"])
        shutil.copytree(saved / conf["model_data"], root / conf["model_data"])
    mlflow_model.add_flavor("pytorch", **conf)


#: ``mlflow.onnx`` as :meth:`mlflow.models.Model.log` sees it, with the pytorch flavor and companions added.
SLIMKIT_FLAVOR = types.SimpleNamespace(__name__="mlflow.onnx", save_model=_save_model)


def log_model(
    *,
    run_id: str,
    onnx_path: Path,
    torch_path: Path | None = None,
    companions: tuple[Path, ...] = (),
    data: DataSplits | None = None,
    name: str = MODEL_NAME,
    warn: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Log the model at ``onnx_path`` as the MLflow model ``name`` of run ``run_id`` (the tracking URI
    and experiment set in MLflow's fluent state) and return its ``ModelInfo``.

    ``torch_path``: the same model as a ``torch.save``-d module, added as the ``pytorch`` flavor when
    slimkit's restricted loader reads it (else ``warn`` says why it was left out); ``companions``:
    files copied beside ``model.onnx`` (tokenizer, config); ``data``: where the input example comes
    from (:func:`model_example`).
    """
    import mlflow.onnx
    import onnx
    from mlflow.models import Model, infer_signature

    example, signature, error = None, None, None
    for source in (data, None) if data is not None else (None,):  # the data's sample, else zeros
        try:
            example, outputs = model_example(onnx_path, source)
            signature = infer_signature(example, outputs)
            break
        except Exception as exc:  # samples the graph does not take as they are, outputs MLflow cannot describe
            example, signature, error = None, None, exc
    if error is not None and signature is None and warn is not None:
        warn(f"the MLflow model has no signature or input example ({_first_line(error)})")
    torch_model = None
    requirements = list(mlflow.onnx.get_default_pip_requirements())  # skips the slow inference
    if torch_path is not None and Path(torch_path).suffix in (".pt", ".pth"):
        try:
            import torch

            from slimkit.plugins.torch.safe_load import load_module

            torch_model = load_module(Path(torch_path))
            requirements.append(f"torch=={torch.__version__.split('+')[0]}")
        except Exception as exc:
            if warn is not None:
                warn(f"the pytorch flavor is left out of the MLflow model ({_first_line(exc)})")
    big = files.model_size(onnx_path) >= EXTERNAL_DATA_BYTES
    return Model.log(
        artifact_path=None,
        name=name,
        flavor=SLIMKIT_FLAVOR,
        run_id=run_id,
        onnx_model=onnx.load(str(onnx_path)),
        torch_model=torch_model,
        companions=tuple(companions),
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=big,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def companion_files(model_dir: Path | None) -> tuple[Path, ...]:
    """The files of ``model_dir`` that load the model back (all but its ONNX files): what
    :func:`log_model` copies beside ``model.onnx``."""
    if model_dir is None or not Path(model_dir).is_dir():
        return ()
    return tuple(
        p for p in sorted(Path(model_dir).iterdir()) if not p.name.endswith((".onnx", ".onnx.data", ".onnx_data"))
    )


# -- the registry -----------------------------------------------------------------------------------


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, version, alias)`` of a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI (version
    may be ``latest``), None for other URIs (``runs:/``, a logged model's ``models:/m-...``)."""
    match = _MODELS_URI.match(str(uri or ""))
    if not match or (match["name"].startswith("m-") and not match["version"] and not match["alias"]):
        return None
    return match["name"], match["version"], match["alias"]


def resolve_version(client: MlflowClient, uri: str) -> ModelVersion | None:
    """The registered model version ``uri`` (``models:/NAME/VERSION``, ``.../latest``, ``models:/NAME@ALIAS``)
    names, or None when it names none."""
    parsed = parse_models_uri(uri)
    if parsed is None:
        return None
    name, version, alias = parsed
    if alias:
        return client.get_model_version_by_alias(name, alias)
    if version and version.isdigit():
        return client.get_model_version(name, version)
    if version in (None, "latest"):
        query = f"name = '{_quote(name)}'"
        found = client.search_model_versions(query, max_results=1, order_by=["version_number DESC"])
        return found[0] if found else None
    return None


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="Registered by slimkit: baseline and compressed versions, linked by their tags."
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def version_tags(report: Report, pipeline: str, target: str, role: str) -> dict[str, str]:
    """The tags of a version: ``role`` (baseline or compressed), ``pipeline``, ``target``, ``isa`` and,
    for the compressed model, ``accuracy``, ``accuracy_drop`` and ``ratio_*``; for the baseline its
    ``accuracy``, ``size_bytes`` and ``latency_p50_ms``."""
    isa = report.target.get("isa") if isinstance(report.target, Mapping) else None
    tags = {
        "role": role,
        "pipeline": pipeline,
        "target": target,
        "isa": ",".join(map(str, isa)) if isinstance(isa, list | tuple) else _fmt(isa),
    }
    metrics = report.compressed if role == "compressed" else report.baseline
    if metrics is not None:
        tags["accuracy"] = _fmt(metrics.accuracy)
        tags["size_bytes"] = str(metrics.size_bytes)
        tags["latency_p50_ms"] = _fmt(metrics.latency_ms.get("p50"))
    if role == "compressed":
        tags["accuracy_drop"] = _fmt(report.accuracy_drop)
        for key, ratio in report.ratios.items():
            if ratio is not None:
                tags[f"ratio_{key}"] = _fmt(ratio)
    return {k: v for k, v in tags.items() if v != ""}


def register(
    client: MlflowClient,
    name: str,
    *,
    run_id: str,
    model_info: ModelInfo,
    report: Report,
    pipeline: str,
    target: str,
    baseline_onnx: Path,
    compressed_onnx: Path,
    source_uri: str | None = None,
    data: DataSplits | None = None,
) -> dict[str, Any]:
    """Register the run's model as a version of ``name``, linked to a baseline version; return what was
    registered (``{"model", "baseline_version", "compressed_version", ...}``).

    The baseline version is, in this order: the version the run's input came from
    (``model=mlflow model.uri=models:/NAME/...``) when it is a version of ``name``; a version of
    ``name`` whose ONNX file has the baseline's SHA-256 (tag ``onnx_sha256``: a sweep registers its
    baseline once); else a new version from ``baseline_onnx`` (logged as the run's MLflow model
    ``baseline``), tagged ``source`` when the input came from MLflow. The compressed version is
    tagged (:func:`version_tags`) with ``baseline_version``, ``baseline_run_id`` and ``source``, and its
    description says the same in words.
    """
    _ensure_registered_model(client, name)
    source = resolve_version(client, source_uri) if source_uri else None
    sha = files.sha256_file(baseline_onnx)
    baseline = source if source is not None and source.name == name else None
    if baseline is None:
        query = f"name = '{_quote(name)}' and tags.onnx_sha256 = '{sha}'"
        found = client.search_model_versions(query, order_by=["version_number ASC"])
        baseline = found[0] if found else None
    if baseline is None:
        info = log_model(run_id=run_id, onnx_path=baseline_onnx, data=data, name=BASELINE_NAME)
        tags = {**version_tags(report, pipeline, target, "baseline"), "onnx_sha256": sha}
        if source_uri:
            tags["source"] = source_uri
        baseline = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            description=f"Baseline of slimkit run {run_id}" + (f", from {source_uri}" if source_uri else "") + ".",
            model_id=info.model_id,
        )
    tags = version_tags(report, pipeline, target, "compressed")
    tags.update(
        {
            "baseline_version": str(baseline.version),
            "baseline_run_id": str(baseline.run_id or ""),
            "onnx_sha256": files.sha256_file(compressed_onnx),
        }
    )
    if source_uri:
        tags["source"] = source_uri
    description = (
        f"Compressed by slimkit (pipeline {pipeline}, target {target}"
        + (f", ISA {tags['isa']}" if tags.get("isa") else "")
        + f") in run {run_id} from {name} version {baseline.version}"
        + (f" (run {baseline.run_id})" if baseline.run_id else "")
        + f": accuracy drop {tags.get('accuracy_drop', '?')} pt, size {tags.get('ratio_size', '?')}x, "
        + f"latency {tags.get('ratio_latency', '?')}x."
    )
    version = client.create_model_version(
        name,
        source=model_info.model_uri,
        run_id=run_id,
        tags={k: v for k, v in tags.items() if v},
        description=description,
        model_id=model_info.model_id,
    )
    return {
        "model": name,
        "baseline_version": str(baseline.version),
        "baseline_run_id": baseline.run_id,
        "compressed_version": str(version.version),
        "uri": f"models:/{name}/{version.version}",
        **({"source": source_uri} if source_uri else {}),
    }


@contextlib.contextmanager
def reading(tracking_uri: str) -> Iterator[None]:
    """While inside, MLflow's process-wide tracking URI is ``tracking_uri`` and downloads show no
    progress bar; both are restored after. (``models:/`` and a run's logged model are resolved through
    the process-wide URI whatever ``tracking_uri=`` a download is given, in MLflow 3.)"""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    before = getattr(utils, "_tracking_uri", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
