"""The Python API: ``slimkit.compress`` runs the same pipelines as the CLI, from a notebook or script."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataSplits, ModelError, Split
from slimkit.core.report import Report


@dataclass(repr=False)
class CompressionResult:
    """What :func:`compress` returns: the report, the compressed model and where files went.

    ``model`` is the compressed model in the form the pipeline's last stage left it, the form
    ``report.json``'s ``artifacts.model`` holds (``adapter.name`` says which):

    - an ``onnx.ModelProto`` after a pipeline that ends in ONNX: ``default``, ``quantize``, ``qat``,
      ``compact``, ``optimize`` and ``search`` (their last technique writes ONNX), and after any
      pipeline on an ONNX model (``model=onnx``, or a ``ModelProto`` passed in);
    - a ``torch.nn.Module`` after a pipeline that keeps a torch model torch (``magnitude``, ``prune``,
      ``sparse``, ``sparse_exec``, ``finetune``, ``structured``, ``layers``, ``lowrank``, ``cluster``,
      ``depthwise``, ``none``); a Hugging Face model stays a transformers module.

    Whatever the form, the run directory holds the ONNX export (``model.onnx``), which
    :meth:`session` runs. ``repr()`` is one line; notebooks render :meth:`_repr_html_` (a table).
    """

    report: Report
    model: Any
    adapter: Any
    run_dir: Path

    @property
    def ratios(self) -> dict[str, float | None]:
        """Baseline / compressed size, latency, params, MACs... (above 1 is better)."""
        return self.report.ratios

    @property
    def accuracy_drop(self) -> float | None:
        """Baseline minus compressed accuracy, in percentage points (None without labels)."""
        return self.report.accuracy_drop

    @property
    def pipeline(self) -> str:
        """The pipeline's name (``default``, ``quantize``...; ``?`` when the report does not say)."""
        return str((self.report.config.get("pipeline") or {}).get("name") or "?")

    @property
    def model_form(self) -> str:
        """The Python type of :attr:`model`, e.g. ``onnx.ModelProto`` or ``torch DigitsCNN``."""
        kind = type(self.model)
        if kind.__module__.split(".")[0] == "onnx":
            return f"onnx.{kind.__name__}"
        return f"{getattr(self.adapter, 'name', kind.__module__.split('.')[0])} {kind.__name__}"

    @property
    def onnx_path(self) -> Path:
        """The compressed model's ONNX file in the run directory."""
        return Path(self.run_dir) / self.report.artifacts.get("onnx", "model.onnx")

    def _summary(self) -> list[tuple[str, str]]:
        """(name, value) pairs of :meth:`__repr__` and the head of :meth:`_repr_html_`."""
        r = self.ratios
        parts = [("pipeline", self.pipeline), ("model", self.model_form)]
        if self.report.status != "FINISHED":
            parts.append(("status", self.report.status))
        if self.accuracy_drop is not None:
            parts.append(("accuracy", f"{-self.accuracy_drop:+.2f} pt"))
        for key in ("size", "latency"):
            if r.get(key) is not None:
                parts.append((key, f"{r[key]:.2f}x"))
        parts.append(("run_dir", str(self.run_dir)))
        return parts

    def __repr__(self) -> str:
        """One line: pipeline, model form, accuracy change, size and latency ratios, run directory."""
        return "CompressionResult(" + ", ".join(f"{k}={v}" for k, v in self._summary()) + ")"

    def _repr_markdown_(self) -> str:  # notebooks render the report table
        return self.report.to_markdown()

    def _repr_html_(self) -> str:
        """An HTML table for notebooks: the summary, then baseline vs compressed, metric by metric."""
        from html import escape

        head = ", ".join(f"{escape(k)} <code>{escape(v)}</code>" for k, v in self._summary())
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in self.report.rows()
        )
        notes = "".join(
            f"<p><b>{escape(str(n.get('kind', '')).replace('_', ' '))}</b>: {escape(str(n.get('message', '')))}</p>"
            for n in getattr(self.report, "notes", None) or []
        )
        return (
            f"<div><p>CompressionResult: {head}</p>"
            "<table><thead><tr><th>metric</th><th>baseline</th><th>compressed</th><th>ratio / change</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>{notes}</div>"
        )

    def save(self, directory: str | Path) -> Path:
        """Write :attr:`model` in its form (``model.onnx`` or ``model.pt``, as the run's
        ``artifacts.model``) and ``report.json`` into ``directory``; returns the model file's path.

        Atomic: a new folder appears complete or not at all; in an existing one (empty, or holding an
        earlier ``save``: ``model*`` and ``report.json`` only) each file is replaced whole and a model
        file of another form is removed. A folder holding anything else is refused
        (:class:`~slimkit.core.ConfigError`): ``save`` never deletes what it did not write."""
        import os
        import shutil
        import tempfile

        from slimkit.core import files

        directory = Path(directory).resolve()
        suffixes = getattr(self.adapter, "suffixes", ()) or (".bin",)
        name = f"model{suffixes[0]}"
        if not directory.exists():
            with files.atomic_dir(directory) as tmp:
                self._write(tmp, name)
            return directory / name
        if not directory.is_dir():
            raise ConfigError(f"cannot save into {directory}: it is a file; pass a folder")
        earlier = list(directory.iterdir())
        other = sorted(p.name for p in earlier if not _saved_file(p))
        if other:
            raise ConfigError(
                f"cannot save into {directory}: it holds {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}"
                " (not an earlier save); pass a new or empty folder"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.{os.getpid()}.", dir=directory.parent))
        try:
            written = self._write(tmp, name)
            for path in earlier:
                if path.name not in written:
                    path.unlink()
            for item in written:  # report.json last: it describes the model beside it
                os.replace(tmp / item, directory / item)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory / name

    def _write(self, folder: Path, name: str) -> list[str]:
        """Write the model as ``folder/name`` and ``report.json``; the names written, report last."""
        self.adapter.save(self.model, folder / name)
        (folder / "report.json").write_text(self.report.to_json() + "\n", encoding="utf-8")
        return sorted((p.name for p in folder.iterdir()), key=lambda n: n == "report.json")

    def session(self, providers: list[Any] | None = None, options: Any = None) -> Any:
        """An ``onnxruntime.InferenceSession`` of the compressed model's ONNX file (``model.onnx`` in
        the run directory, or :attr:`model` itself when it is a ``ModelProto`` and the file is gone),
        ready to run: ``s.run(None, {s.get_inputs()[0].name: x})``. ``providers`` default to ONNX
        Runtime's CPU provider; ``options`` is an ``onnxruntime.SessionOptions``."""
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        path = self.onnx_path
        if path.is_file():
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        if type(self.model).__module__.split(".")[0] == "onnx":
            return ort.InferenceSession(self.model.SerializeToString(), sess_options=options, providers=providers)
        raise ModelError(f"{path} is missing and the model is a {self.model_form}; re-run, or export it to ONNX")


def _saved_file(path: Path) -> bool:
    """Whether ``path`` is a file :meth:`CompressionResult.save` writes."""
    return path.is_file() and (path.name == "report.json" or path.name.startswith("model"))


def arrays_to_splits(
    x: np.ndarray | Mapping[str, np.ndarray],
    y: np.ndarray | None,
    seed: int,
    name: str = "arrays",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DataSplits:
    """Split in-memory arrays into train/val/test (shuffled with ``seed``)."""
    inputs = {"input": np.asarray(x)} if not isinstance(x, Mapping) else {k: np.asarray(v) for k, v in x.items()}
    n = len(next(iter(inputs.values())))
    if n < 10:
        raise ConfigError(f"data has {n} samples; give at least 10 to split into train/val/test")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(n * test_fraction))
    n_val = max(1, int(n * val_fraction))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}

    def split(ix: np.ndarray) -> Split:
        return Split({k: v[ix] for k, v in inputs.items()}, None if y is None else np.asarray(y)[ix])

    classes = None if y is None else int(np.asarray(y).max()) + 1
    return DataSplits(name=name, num_classes=classes, **{k: split(v) for k, v in parts.items()})


def compress(
    model: Any = None,
    data: Any = None,
    *,
    pipeline: str = "default",
    target: str = "cpu",
    tracking: str | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    quiet: bool = True,
    **params: Any,
) -> CompressionResult:
    """Compress ``model`` on ``data`` with a named pipeline and measure it on ``target``.

    model: an ``nn.Module``, or the name of a model config option (``"digits_resnet"``), or None for
        the config's default.
    data: a :class:`DataSplits`, an ``(x, y)`` tuple of arrays (split 70/10/20 with the seed), the name
        of a data option (``"digits"``), or None for the default.
    overrides: Hydra overrides as on the command line (``["pipeline.stages.prune.ratio=0.3"]``).
    params: more overrides as keywords, ``__`` standing for ``.``:
        ``compress(m, d, pipeline__stages__prune__ratio=0.3)``.

    Returns a :class:`CompressionResult` (its ``model`` is an ``onnx.ModelProto`` after a pipeline that
    ends in ONNX, such as ``default``, else the framework's model; see there); raises a
    :class:`~slimkit.core.SlimkitError` for bad input.
    """
    from .config import compose, to_plain
    from .run import run_config

    ov = [f"pipeline={pipeline}", f"target={target}"]
    if tracking is not None:
        ov.append(f"tracking={tracking}")
    if isinstance(model, str):
        ov.append(f"model={model}")
        model = None
    if isinstance(data, str):
        ov.append(f"data={data}")
        data = None
    if quiet:
        ov.append("ui.quiet=true")
    ov += list(overrides or [])
    ov += [f"{k.replace('__', '.')}={_hydra_value(v)}" for k, v in params.items()]
    cfg = compose(ov)
    plain = to_plain(cfg)
    if model is not None:
        plain["model"] = {"name": type(model).__name__, "adapter": _adapter_for(model)}
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ConfigError("data=(x, y) expects two arrays; pass labels as None for unlabeled data")
        data = arrays_to_splits(data[0], data[1], int(plain.get("seed", 0)))
    if data is not None and not isinstance(data, DataSplits):
        raise ConfigError(
            f"data of type {type(data).__name__} is not supported; pass DataSplits, (x, y) arrays or a data option name"
        )
    if data is not None:
        plain["data"] = {**data.describe(), "name": "python", "dataset": data.name}
    if run_dir is None:
        run_dir = Path("outputs") / "api" / time.strftime("%Y-%m-%d_%H-%M-%S")
        n = 0
        while run_dir.exists():
            n += 1
            run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{n}")
    runner = run_config(plain, Path(run_dir), model=model, data=data)
    return CompressionResult(report=runner.report, model=runner.model, adapter=runner.adapter, run_dir=Path(run_dir))


def _adapter_for(model: Any) -> str:
    """The adapter for an in-memory model: the first plugin whose ``slimkit_adapter_for`` answers."""
    from slimkit.core.plugins import get_plugin_manager, get_registry

    name = get_plugin_manager().hook.slimkit_adapter_for(model=model)
    if name is None:
        adapters = ", ".join(sorted(get_registry().adapters))
        raise ConfigError(
            f"no adapter for a model of type {type(model).__module__}.{type(model).__name__}; pass a model one of "
            f"the installed adapters handles ({adapters}: a torch.nn.Module or an onnx.ModelProto)"
        )
    return name


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)
