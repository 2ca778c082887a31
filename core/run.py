"""One slimkit run: baseline, stages, export, measurement, report — framework-free.

The pipeline layer turns config into a :class:`RunSpec`; :func:`execute` does the work through the
adapter, technique and target plugins and tells observers (tracking, terminal) through the hooks.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .adapter import ModelAdapter
from .data import DataSplits, load_data
from .errors import DataError, ModelError, SlimkitError, TechniqueError
from .registry import Registry
from .report import ModelMetrics, Report, StageResult
from .secrets import redact
from .target import BenchmarkRequest, Target, compare_outputs
from .technique import StageContext, Technique, TechniqueConfig

SCHEMA_VERSION = 1


@dataclass
class StageSpec:
    """One stage: its name in the pipeline, the technique class and its validated config."""

    name: str
    technique: type[Technique]
    config: TechniqueConfig


@dataclass
class RunSpec:
    """Everything a run needs, already validated by the pipeline layer."""

    run_dir: Path
    seed: int
    model: dict[str, Any]
    data: dict[str, Any]
    target: dict[str, Any]
    tracking: dict[str, Any]
    stages: list[StageSpec]
    cache_dir: Path | None = None
    eval_batch_size: int = 256
    config: dict[str, Any] = field(default_factory=dict)
    pipeline_name: str = ""


@dataclass
class RunContext:
    """The state of a running run that observers may read."""

    spec: RunSpec
    hook: Any
    registry: Registry
    report: Report
    tracker: Any = None
    data: DataSplits | None = None

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    def progress(self, task: str, completed: float, total: float | None) -> None:
        self.hook.slimkit_progress(ctx=self, task=task, completed=completed, total=total)

    def artifact(self, path: Path, kind: str) -> None:
        self.hook.slimkit_log_artifact(ctx=self, path=Path(path), kind=kind)

    def log(self, message: str, stage: str | None = None) -> None:
        """One line to the run's log: ``run.log`` in the run directory and the ``slimkit_log`` hook."""
        line = f"[{stage}] {message}" if stage else message
        with open(self.run_dir / "run.log", "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
        self.hook.slimkit_log(ctx=self, message=message, stage=stage)


def stage_seed(seed: int, stage: str) -> int:
    """A per-stage seed, so a stage gives the same result whether earlier stages ran or were cached."""
    return int(files.sha256_json([seed, stage])[:8], 16)


def data_fingerprint(data: DataSplits) -> str:
    """The data's content hash (:meth:`DataSplits.fingerprint`: read chunk by chunk, never whole)."""
    return data.fingerprint()


class Runner:
    """Runs one :class:`RunSpec`. Use :func:`execute`."""

    def __init__(self, spec: RunSpec, pm: Any, registry: Registry) -> None:
        self.spec = spec
        self.pm = pm
        self.registry = registry
        self.report = Report(config=spec.config, run_dir=str(spec.run_dir))
        self.ctx = RunContext(spec=spec, hook=pm.hook, registry=registry, report=self.report)
        self.target: Target | None = None
        self.model: Any = None
        self.adapter: ModelAdapter | None = None

    # -- helpers ----------------------------------------------------------------------------------

    def _rel(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.spec.run_dir.resolve()))
        except ValueError:
            return str(path)

    def _write_report(self) -> None:
        d = self.spec.run_dir
        files.write_text(d / "report.json", self.report.to_json() + "\n")
        files.write_text(d / "report.md", self.report.to_markdown())

    def _check_runs(self, adapter: ModelAdapter, model: Any, data: DataSplits) -> None:
        adapter.check_inputs(model, data.test)
        example = data.test.example(2)
        try:
            out = adapter.predict(model, example)
        except SlimkitError:
            raise
        except Exception as exc:
            shapes = {k: list(v.shape) for k, v in example.items()}
            raise DataError(
                f"the model does not run on data {data.name!r} (inputs {shapes}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                "pick data whose inputs match the model (data=..., data.size=...)"
            ) from exc
        if data.num_classes is not None and data.test.labels is not None:
            if out.ndim != 2 or out.shape[-1] < data.num_classes:
                raise DataError(
                    f"the model outputs shape {list(out.shape)} but data {data.name!r} has "
                    f"{data.num_classes} classes; give a classifier with {data.num_classes} outputs"
                )

    # -- measurement ------------------------------------------------------------------------------

    def measure(
        self, adapter: ModelAdapter, model: Any, onnx_path: Path | None, label: str, timed: bool = True
    ) -> ModelMetrics:
        """Accuracy, size, params, MACs and (``timed``) latency of ``model`` (and its ONNX export)."""
        data = self.ctx.data
        assert data is not None and self.target is not None
        self.ctx.progress(f"{label}: evaluate", 0, None)
        metrics = adapter.evaluate(model, data.test, self.spec.eval_batch_size)
        count = adapter.count_params(model)
        example1 = data.test.example(1)
        macs = adapter.macs(model, example1)
        size = files.model_size(onnx_path) if onnx_path else 0
        zsize = files.zipped_size(onnx_path) if onnx_path else None
        latencies, latency_ms = self.latency(adapter, model, onnx_path, label) if timed else ([], {})
        return ModelMetrics(
            accuracy=metrics.get("accuracy"),
            size_bytes=int(size),
            size_zip_bytes=zsize,
            params=count.total,
            nonzero_params=count.nonzero,
            macs=int(macs),
            latency_ms=latency_ms,
            latencies=latencies,
            extra={k: v for k, v in metrics.items() if k != "accuracy"},
        )

    def latency(
        self, adapter: ModelAdapter, model: Any, onnx_path: Path | None, label: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """All latencies from the target, and the primary one (first runtime, first batch size)."""
        assert self.target is not None
        lats = self.target.benchmark(self._request(adapter, model, onnx_path), self._progress(label))
        return _latencies(lats)

    def _request(self, adapter: ModelAdapter, model: Any, onnx_path: Path | None) -> BenchmarkRequest:
        data = self.ctx.data
        assert data is not None and self.target is not None
        examples = {b: data.test.example(b) for b in self.target.batch_sizes}
        if onnx_path is not None:
            examples = {b: adapter.complete_feeds(onnx_path, ex) for b, ex in examples.items()}
        return BenchmarkRequest(
            onnx_path=onnx_path,
            examples=examples,
            # An ONNX model's "framework" runtime (an adapter whose files are .onnx: onnx, llm_onnx) is
            # ONNX Runtime itself: measured once, not twice.
            framework_model=None if adapter.suffixes[:1] == (".onnx",) else model,
            framework_runner=adapter.predict,
            framework_name=adapter.name,
        )

    def _progress(self, label: str) -> Any:
        return lambda t, c, n: self.ctx.progress(f"{label}: {t}", c, n)

    def export(self, adapter: ModelAdapter, model: Any, path: Path) -> Path:
        data = self.ctx.data
        assert data is not None
        try:
            with files.atomic_path(path) as tmp:
                how = adapter.export_onnx(model, tmp, data.test.example(1))
        except SlimkitError:
            raise
        except Exception as exc:
            raise ModelError(
                f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                "check that the model is traceable with torch.export (no data-dependent control flow)"
            ) from exc
        if how:  # which exporter made the file (an adapter may fall back from one to another: logged)
            self.report.sections.setdefault("export", {})[self._rel(path)] = dict(how)
            if how.get("fallback_reason"):
                self.ctx.log(f"ONNX export of {self._rel(path)}: " + ", ".join(f"{k}={v}" for k, v in how.items()))
        return path

    # -- stages -----------------------------------------------------------------------------------

    def run_stage(
        self,
        index: int,
        stage: StageSpec,
        adapter: ModelAdapter,
        model: Any,
        fingerprint: str,
        baseline: Any,
        baseline_adapter: ModelAdapter,
        data_fp: str,
    ) -> tuple[ModelAdapter, Any, str, StageResult]:
        """Run one stage (or take it from the cache); return the new adapter, model, fingerprint, result."""
        spec = self.spec
        technique = stage.technique(stage.config)
        out_framework = technique.output_framework or adapter.name
        out_adapter = adapter if out_framework == adapter.name else self.registry.adapter(out_framework)()
        key = files.sha256_json(
            {
                "v": SCHEMA_VERSION,
                "input": fingerprint,
                "technique": stage.technique.name,
                "config": asdict(stage.config),
                "seed": stage_seed(spec.seed, stage.name),
                "data": data_fp,
            }
        )
        stage_dir = spec.run_dir / "stages" / f"{index:02d}_{stage.name}"
        cache_entry = spec.cache_dir / key if spec.cache_dir else None
        model_file = stage_dir / f"model{out_adapter.suffixes[0] if out_adapter.suffixes else '.bin'}"
        t0 = time.perf_counter()
        self.ctx.hook.slimkit_stage_start(
            ctx=self.ctx, name=stage.name, technique=stage.technique.name, index=index, total=len(spec.stages)
        )
        hit = self._from_cache(cache_entry, key, stage_dir, model_file, out_adapter, stage.name)
        cached = hit is not None
        if hit is not None:
            new_model, meta = hit
        else:
            new_model, meta = self._apply(
                stage,
                technique,
                adapter,
                out_adapter,
                model,
                model_file,
                key,
                baseline_pair=(baseline, baseline_adapter),
            )
            if cache_entry is not None:
                files.copy_tree(stage_dir, cache_entry)
        seconds = time.perf_counter() - t0
        self.ctx.log(
            f"{stage.technique.name}: {'taken from the cache' if cached else f'done in {seconds:.1f} s'}", stage.name
        )
        new_fp = files.sha256_json([key, "out"])
        result = StageResult(
            name=stage.name,
            technique=stage.technique.name,
            index=index,
            cached=cached,
            seconds=seconds,
            fingerprint=new_fp,
            model_path=self._rel(model_file),
            metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
            artifacts={k: self._rel(stage_dir / v) for k, v in meta.get("artifacts", {}).items()},
            info=meta.get("info", {}),
        )
        return out_adapter, new_model, new_fp, result

    def _apply(
        self,
        stage: StageSpec,
        technique: Technique,
        adapter: ModelAdapter,
        out_adapter: ModelAdapter,
        model: Any,
        model_file: Path,
        key: str,
        baseline_pair: tuple[Any, ModelAdapter],
    ) -> tuple[Any, dict[str, Any]]:
        """Run the technique in a temporary stage directory that becomes ``model_file``'s folder atomically.

        Returns the new model and the stage's ``stage.json`` content. A technique's failure keeps what it
        wrote as ``<stage dir>.failed`` and becomes a one-line :class:`TechniqueError`.
        """
        seed = stage_seed(self.spec.seed, stage.name)
        stage_dir = model_file.parent
        out_adapter.seed(seed)
        assert self.ctx.data is not None
        with files.atomic_dir(stage_dir) as tmp:
            sctx = StageContext(
                stage=stage.name,
                seed=seed,
                data=self.ctx.data,
                work_dir=tmp,
                baseline=baseline_pair[0],
                baseline_adapter=baseline_pair[1],
                target=self.target,
                progress=lambda t, c, n: self.ctx.progress(f"{stage.name}: {t}", c, n),
                log=lambda message: self.ctx.log(message, stage.name),
                example=self.ctx.data.test.example(1),
                run=self.ctx,
            )
            try:
                new_model = technique.apply(adapter.copy(model), adapter, sctx)
            except TechniqueError:
                _keep_failed_stage(tmp, stage_dir)
                raise
            except SlimkitError:
                raise
            except Exception as exc:
                _keep_failed_stage(tmp, stage_dir)
                raise TechniqueError(
                    f"stage {stage.name!r} ({stage.technique.name}) failed: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}; run with SLIMKIT_DEBUG=1 for the traceback"
                ) from exc
            out_adapter.save(new_model, tmp / model_file.name)
            meta = {
                "key": key,
                "technique": stage.technique.name,
                "config": redact(asdict(stage.config)),  # no password in a file (the key hashes the real one)
                "framework": out_adapter.name,
                "metrics": sctx.metrics,
                "info": sctx.info,
                "artifacts": {k: Path(v).name for k, v in sctx.artifacts.items()},
            }
            meta["files"] = files.file_hashes(tmp, skip=("stage.json",))  # checked on every cache hit
            files.write_json(tmp / "stage.json", meta)
        if out_adapter.file_backed:  # the model named files in the temporary folder: read back the saved one
            new_model = out_adapter.load_file(model_file)
        return new_model, meta

    def _from_cache(
        self,
        entry: Path | None,
        key: str,
        stage_dir: Path,
        model_file: Path,
        out_adapter: ModelAdapter,
        stage: str,
    ) -> tuple[Any, dict[str, Any]] | None:
        """The stage's model and ``stage.json`` from cache ``entry``, or None to compute the stage.

        An entry is used only if its ``stage.json`` names this key and the SHA-256 of every file it
        lists (and no file more); it is loaded without running code from it
        (:meth:`ModelAdapter.load_file`). A bad entry is dropped with a one-line warning."""
        if entry is None or not (entry / "stage.json").exists():
            return None
        try:
            meta = _read_json(entry / "stage.json")
            listed = meta.get("files") if isinstance(meta, dict) else None
            if not isinstance(listed, dict) or meta.get("key") != key:
                raise ValueError("its stage.json is not one slimkit wrote for this stage")
            found = files.file_hashes(entry, skip=("stage.json",))
            changed = sorted(set(listed) ^ set(found) | {n for n in listed if found.get(n) != listed[n]})
            if changed:
                raise ValueError(f"{', '.join(changed[:3])} changed since it was cached")
            files.copy_tree(entry, stage_dir)
            return out_adapter.load_file(model_file), meta
        except Exception as exc:  # corrupt, truncated, edited or untrusted: recompute, never trust
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self.ctx.log(f"warning: cache entry {entry} dropped ({reason}); computing the stage again", stage)
            import shutil

            shutil.rmtree(entry, ignore_errors=True)
            shutil.rmtree(stage_dir, ignore_errors=True)
            return None

    # -- the run ----------------------------------------------------------------------------------

    def execute(self, model_obj: Any = None, data_obj: DataSplits | None = None) -> Report:
        spec = self.spec
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        if spec.cache_dir is not None:  # entries half-written by a run that was killed
            files.remove_stale_temporaries(spec.cache_dir)
        tracker_cls = self.registry.tracker(spec.tracking.get("name", "none"))
        tracker = tracker_cls(spec.tracking)
        tracker.check()
        self.ctx.tracker = tracker
        self.pm.register(tracker, name=f"tracker-{id(tracker)}")
        try:
            return self._execute(model_obj, data_obj)
        except BaseException as exc:
            self.report.status = "FAILED"
            self.report.error = (
                str(exc) if isinstance(exc, SlimkitError) else _interrupted(exc) or f"{type(exc).__name__}: {exc}"
            )
            if not isinstance(exc, SlimkitError | KeyboardInterrupt):
                files.write_text(spec.run_dir / "error.txt", traceback.format_exc())
            self.report.mlflow_run_id = tracker.run_id
            self._write_report()
            if (spec.run_dir / "run.log").exists():
                self.ctx.artifact(spec.run_dir / "run.log", "log")
            try:
                self.ctx.hook.slimkit_run_failed(ctx=self.ctx, error=exc, report=self.report)
            finally:
                self.report.mlflow_run_id = tracker.run_id
                self._write_report()
            raise
        finally:
            self.pm.unregister(tracker)

    def _execute(self, model_obj: Any, data_obj: DataSplits | None) -> Report:
        spec = self.spec
        report = self.report
        self.target = self.registry.target(spec.target["name"])(spec.target)
        self.target.check_available()
        report.target = {"name": self.target.name, **_plain(self.target.cfg), **_plain(self.target.describe())}
        self.ctx.hook.slimkit_run_start(ctx=self.ctx)
        report.mlflow_run_id = self.ctx.tracker.run_id
        adapter, model, data = self._load(model_obj, data_obj)
        data_fp = data_fingerprint(data)

        # baseline
        base_onnx = self.export(adapter, model, spec.run_dir / "baseline" / "model.onnx")
        report.baseline = self.measure(adapter, model, base_onnx, "baseline")
        report.artifacts["baseline_onnx"] = self._rel(base_onnx)
        baseline, baseline_adapter = model, adapter

        # stages
        fingerprint = adapter.fingerprint(model)
        for i, stage in enumerate(spec.stages):
            adapter, model, fingerprint, result = self.run_stage(
                i, stage, adapter, model, fingerprint, baseline, baseline_adapter, data_fp
            )
            report.stages.append(result)
            for kind, rel in result.artifacts.items():
                self.ctx.artifact(spec.run_dir / rel, kind)
            self.ctx.hook.slimkit_stage_end(ctx=self.ctx, result=result)

        model_path, onnx_path = self._save_final(adapter, model)
        self._compare(adapter, model, onnx_path, baseline_adapter, baseline, base_onnx)
        report.status = "FINISHED"
        report.mlflow_run_id = self.ctx.tracker.run_id
        self._write_report()
        for path, kind in (
            (model_path, "model"),
            (onnx_path, "onnx"),
            (spec.run_dir / "report.json", "report"),
            (spec.run_dir / "report.md", "report"),
        ):
            self.ctx.artifact(path, kind)
        self.ctx.hook.slimkit_run_end(ctx=self.ctx, report=report)
        self._write_report()
        self.model = model
        self.adapter = adapter
        return report

    def _load(self, model_obj: Any, data_obj: DataSplits | None) -> tuple[ModelAdapter, Any, DataSplits]:
        """The adapter, the model and the data (made for the model's inputs by a source that makes them);
        checks that every stage handles the model and that it runs."""
        spec = self.spec
        adapter = self.registry.adapter(spec.model.get("adapter", "torch"))()
        adapter.seed(spec.seed)
        model = model_obj if model_obj is not None else adapter.load(spec.model)
        if data_obj is None:  # a data source that makes inputs (random) asks the model what they are
            specs = getattr(adapter, "input_specs", None)
            loader = self.registry.data_loader(spec.data["name"])
            data_obj = load_data(loader, spec.data, spec.seed, (lambda: specs(model)) if specs else None)
        self.ctx.data = data_obj
        for st in spec.stages:
            if not st.technique.frameworks or adapter.name not in st.technique.frameworks:
                working = [n for n, t in self.registry.techniques.items() if adapter.name in t.frameworks]
                raise TechniqueError(
                    f"technique {st.technique.name!r} (stage {st.name!r}) does not support {adapter.name} "
                    f"models; techniques that do: {', '.join(sorted(working)) or 'none'}"
                )
        self._check_runs(adapter, model, data_obj)
        return adapter, model, data_obj

    def _save_final(self, adapter: ModelAdapter, model: Any) -> tuple[Path, Path]:
        """The compressed model as its framework's file and as ONNX, written atomically."""
        spec = self.spec
        model_path = spec.run_dir / f"model{adapter.suffixes[0] if adapter.suffixes else '.bin'}"
        with files.atomic_path(model_path) as tmp:
            adapter.save(model, tmp)
        onnx_path = spec.run_dir / "model.onnx"
        if model_path.suffix != ".onnx":
            self.export(adapter, model, onnx_path)
        self.report.artifacts["model"] = self._rel(model_path)
        self.report.artifacts["onnx"] = self._rel(onnx_path)
        return model_path, onnx_path

    def _compare(
        self,
        adapter: ModelAdapter,
        model: Any,
        onnx_path: Path,
        baseline_adapter: ModelAdapter,
        baseline: Any,
        base_onnx: Path,
    ) -> None:
        """Measure the compressed model, the baseline's latency again, fidelity, and the target's report."""
        spec, report, data = self.spec, self.report, self.ctx.data
        assert data is not None and report.baseline is not None and self.target is not None
        report.compressed = self.measure(adapter, model, onnx_path, "compressed", timed=False)
        # Latency drifts on shared machines: time the compressed model and the baseline again in
        # interleaved rounds, so the two are compared under the same conditions and the report can
        # tell a ratio whose rounds disagree (noise) from a result.
        compressed_lats, baseline_lats = self.target.benchmark_rounds(
            [self._request(adapter, model, onnx_path), self._request(baseline_adapter, baseline, base_onnx)],
            [self._progress("compressed"), self._progress("baseline (again)")],
        )
        report.compressed.latencies, report.compressed.latency_ms = _latencies(compressed_lats)
        report.baseline.latencies, report.baseline.latency_ms = _latencies(baseline_lats)
        report.compressed.extra["layer_sparsity"] = adapter.layer_sparsity(model)
        report.baseline.extra["layer_sparsity"] = baseline_adapter.layer_sparsity(baseline)
        compressed_all = adapter.all_outputs(model, data.test, spec.eval_batch_size)
        compressed_outputs = compressed_all[0]
        report.fidelity = fidelity(
            baseline_adapter.all_outputs(baseline, data.test, spec.eval_batch_size), compressed_all
        )
        if (spec.run_dir / "run.log").exists():
            self.ctx.artifact(spec.run_dir / "run.log", "log")
        # The target runs the shipped ONNX model and compares it with the compressed model's own outputs.
        self.ctx.progress("target: placement and validation", 0, None)
        feeds = adapter.complete_feeds(onnx_path, data.test.inputs)
        report.target.update(self.target.report(onnx_path, _per_sample(compressed_outputs, len(data.test)), feeds))


def fidelity(reference: np.ndarray | list[np.ndarray], output: np.ndarray | list[np.ndarray]) -> dict[str, Any]:
    """The report's ``fidelity``: :func:`~slimkit.core.target.compare_outputs` without its sample count
    (per output too, for a multi-output model; the totals are the worst output's)."""
    return {k: v for k, v in compare_outputs(reference, output).items() if k != "samples"}


def _per_sample(outputs: np.ndarray, samples: int) -> np.ndarray:
    """``outputs`` with one row per sample, as the target's own outputs come: an adapter may give
    fidelity one row per position (a language model's logits ``[N * T, V]`` become ``[N, T * V]``)."""
    if len(outputs) != samples and samples > 0 and outputs.size % samples == 0:
        return outputs.reshape(samples, -1)
    return outputs


def _latencies(lats: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Latencies as report dicts, and the primary one (first runtime, first batch size)."""
    primary = (
        {"p50": lats[0].p50, "p90": lats[0].p90, "batch": lats[0].batch, "runtime": lats[0].runtime} if lats else {}
    )
    return [lat.to_dict() for lat in lats], primary


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _keep_failed_stage(tmp: Path, stage_dir: Path) -> None:
    """Keep what a failed stage wrote (e.g. its best candidate) as ``<stage dir>.failed``."""
    import os
    import shutil

    if not any(Path(tmp).iterdir()):
        return
    failed = stage_dir.with_name(f"{stage_dir.name}.failed")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(tmp, failed)


def _interrupted(exc: BaseException) -> str:
    """The report's error for a run stopped by a signal ('' for other errors)."""
    if not isinstance(exc, KeyboardInterrupt):
        return ""
    return str(exc) or "interrupted by SIGINT (Ctrl-C)"


def clean_dead_run(run_dir: Path, reason: str, mlflow_run_id: str | None = None) -> list[Path]:
    """Tidy the folder of a run whose process died (SIGKILL, power loss): remove the temporary files
    and folders it was writing, and give it a ``report.json`` saying it was killed if it has none.
    Return what was removed. Finished stages stay (and the stage cache makes a rerun resume)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = files.remove_stale_temporaries(run_dir) + files.remove_stale_temporaries(run_dir / "stages")
    if not (run_dir / "report.json").exists():
        report = Report(run_dir=str(run_dir), status="KILLED", error=reason, mlflow_run_id=mlflow_run_id)
        files.write_text(run_dir / "report.json", report.to_json() + "\n")
    return removed


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())


def execute(spec: RunSpec, pm: Any, registry: Registry, model: Any = None, data: DataSplits | None = None) -> Runner:
    """Run ``spec``; return the runner (its ``report``, final ``model`` and ``adapter``)."""
    runner = Runner(spec, pm, registry)
    runner.execute(model, data)
    return runner
