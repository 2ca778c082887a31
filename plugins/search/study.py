"""The search engine: an optuna study whose trials are ordinary slimkit runs.

Each trial samples parameters (:mod:`.space`), turns them into stages and runs them through the core
runner (:func:`slimkit.core.run.execute`) with the run's own adapter, target and tracker plugins: the
trial's model, baseline and latencies are measured on the target exactly as a normal run measures
them, and the trial is its own tracker run (an MLflow child of the search's run). optuna only stores
parameters, objective values and user attributes (metrics, constraint violations, errors).

Several processes (on one machine or many) share a study through optuna's RDB storage; heartbeats
let a live worker mark the trial of a dead one failed (:func:`optuna.storages.fail_stale_trials`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, SlimkitError, StageContext, TechniqueError, hookimpl
from slimkit.core.process import process_token, token_dead
from slimkit.core.run import RunSpec, StageSpec, execute
from slimkit.core.secrets import redact

from .config import MAXIMIZE, SearchConfig
from .space import active_space, describe, trial_stages

if TYPE_CHECKING:
    import optuna

    from slimkit.core.adapter import ModelAdapter
    from slimkit.core.run import RunContext

#: Seconds to wait for a database server to accept a TCP connection.
CONNECT_TIMEOUT_S = 3

#: Trial states that count towards ``n_trials``: trials that ran. Repeats of tried parameters are
#: recorded as PRUNED and do not count (at most ``DUPLICATES_PER_TRIAL`` per trial of the budget).
_COUNTED = ("COMPLETE", "FAIL")
DUPLICATES_PER_TRIAL = 2


class SearchError(TechniqueError):
    """The search cannot give a result: storage unreachable, no trial meets the constraints, all failed."""


# -- storage ----------------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@", 1)[-1] if "@" in url else url


def check_storage(url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line :class:`SearchError` unless the storage at ``url`` looks usable, within seconds.

    SQLite: its directory is created (and must be writable). A server (PostgreSQL, MySQL): its host
    and port must accept a TCP connection within ``timeout`` seconds (a Unix socket is not checked).
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"search.storage={url!r} is not a database URL ({exc}); use sqlite:///study.db") from exc
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db in ("", ":memory:"):
            raise ConfigError(
                f"search.storage={url} is an in-memory database that no other process or re-run can see; "
                "use sqlite:///study.db"
            )
        parent = Path(db).resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SearchError(
                f"cannot create the directory {str(parent)!r} of the study database {url}: {exc.strerror or exc}; "
                "set search.storage=sqlite:///<writable dir>/study.db"
            ) from exc
        if not os.access(parent, os.W_OK):
            raise SearchError(
                f"the directory {str(parent)!r} of the study database {url} is not writable; "
                "set search.storage=sqlite:///<writable dir>/study.db"
            )
        return
    host = parsed.host
    if not host:
        return
    port = parsed.port or {"postgresql": 5432, "mysql": 3306}.get(parsed.get_backend_name(), 0)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SearchError(
            f"cannot reach the study storage {mask_url(url)} ({reason}); start the database server "
            "or set search.storage=sqlite:///study.db"
        ) from exc


def open_storage(cfg: SearchConfig, on_stale: Any = None) -> optuna.storages.RDBStorage:
    """optuna's RDB storage for ``cfg.storage`` with heartbeats; one-line errors naming the URL.

    ``on_stale(study, trial)``: called for each trial of a dead worker that this process marks failed.
    """
    import optuna

    url = str(cfg.storage)
    check_storage(url)
    if url.startswith("sqlite:"):
        engine: dict[str, Any] = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    else:
        engine = {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=int(cfg.heartbeat_s),
                    grace_period=int(cfg.grace_s),
                    failed_trial_callback=on_stale,
                )
        except ModuleNotFoundError as exc:  # the database driver: psycopg for postgresql://
            raise SearchError(
                f"the study storage {mask_url(url)} needs the Python package {exc.name!r}; "
                "pip install 'slimkit[team]' (psycopg for PostgreSQL) or use search.storage=sqlite:///study.db"
            ) from exc
        except Exception as exc:
            first = " ".join(str(exc).split())[:300]
            # Workers starting together on a fresh database race to create optuna's tables: the
            # loser sees "already exists" and finds them created when it tries again.
            if "already exists" in first and attempt < 5:
                time.sleep(0.5 + attempt)
                continue
            raise SearchError(
                f"cannot open the study storage {mask_url(url)}: {type(exc).__name__}: {first}; "
                "check search.storage (user, password, database) or use sqlite:///study.db"
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def directions(cfg: SearchConfig) -> list[str]:
    """optuna directions of ``cfg.objectives``."""
    return ["maximize" if o in MAXIMIZE else "minimize" for o in cfg.objectives]


def make_sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded. Constraints reach it through ``Trial.set_constraint``."""
    import optuna

    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(2, int(cfg.startup_trials)), seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=int(cfg.startup_trials), seed=seed, multivariate=True)


def open_study(cfg: SearchConfig, storage: Any, seed: int) -> optuna.Study:
    """Create or load the study ``cfg.study``; its directions must match ``cfg.objectives``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are in the report
    dirs = directions(cfg)
    try:
        existing = optuna.load_study(study_name=cfg.study, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        have = [d.name.lower() for d in existing.directions]
        if have != dirs or existing.user_attrs.get("objectives", list(cfg.objectives)) != list(cfg.objectives):
            raise ConfigError(
                f"study {cfg.study!r} in {mask_url(str(cfg.storage))} optimises "
                f"{existing.user_attrs.get('objectives', have)}, not {list(cfg.objectives)}; "
                "use another search.study or the same search.objectives"
            )
    n_existing = len(existing.trials) if existing is not None else 0
    running = existing is not None and any(t.state.name == "RUNNING" for t in existing.trials)
    # Sequential re-runs stay deterministic; concurrent workers get different streams.
    salt = zlib.crc32(worker_id().encode()) % 100_000 if running else 0
    sampler = make_sampler(cfg, seed + n_existing + salt)
    study = optuna.create_study(
        study_name=cfg.study, storage=storage, directions=dirs, sampler=sampler, load_if_exists=True
    )
    if existing is None:
        try:
            study.set_user_attr("objectives", list(cfg.objectives))
        except Exception:  # another worker created it at the same moment
            pass
    return study


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


# -- one trial --------------------------------------------------------------------------------------


@dataclass
class TrialMetrics:
    """What the search reads from one trial's report."""

    accuracy: float | None
    accuracy_drop: float
    speedup: float
    latency_ms: float
    baseline_latency_ms: float
    size_mb: float
    params: int

    def objective(self, name: str) -> float:
        return float(getattr(self, name))


def violations(metrics: Mapping[str, Any], cfg: SearchConfig) -> dict[str, float]:
    """Per constraint of ``cfg``: how far ``metrics`` miss it, relative to the bound (<= 0: met)."""
    out: dict[str, float] = {}
    for name, bound in cfg.constraints().items():
        if name == "max_accuracy_drop":
            out[name] = (float(metrics["accuracy_drop"]) - bound) / max(bound, 0.1)
        elif name == "min_speedup":
            out[name] = (bound - float(metrics["speedup"])) / bound
        elif name == "max_latency_ms":
            out[name] = (float(metrics["latency_ms"]) - bound) / bound
        elif name == "max_size_mb":
            out[name] = (float(metrics["size_mb"]) - bound) / bound
    return out


class _TrialRecorder:
    """A plugin in the trials' plugin manager: stores each trial run's tracker run id in the study."""

    def __init__(self) -> None:
        self.trial: Any = None

    @hookimpl
    def slimkit_run_start(self, ctx: RunContext) -> None:
        run_id = getattr(ctx.tracker, "run_id", None)
        if self.trial is not None and run_id:
            self.trial.set_user_attr("mlflow_run_id", str(run_id))


@dataclass
class Searcher:
    """Runs the trials of one search in this process (one worker)."""

    cfg: SearchConfig
    run: RunContext
    model: Any
    adapter: ModelAdapter
    sctx: StageContext
    pm: Any = None
    recorder: _TrialRecorder = field(default_factory=_TrialRecorder)
    started: int = 0
    layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from slimkit.core.plugins import build_plugin_manager

        # Trials are runs of their own: their own tracker run and no terminal output; the search's
        # tracker (registered in the run's plugin manager) must not see their hooks.
        self.pm = build_plugin_manager()
        for name in ("terminal",):
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
        self.pm.register(self.recorder, name="search-trial-recorder")
        self.layers = list(self.adapter.layer_sparsity(self.model))

    def supported(self, technique: str) -> bool:
        """Whether the registered ``technique`` handles this model's framework (torch, onnx)."""
        try:
            return self.adapter.name in self.run.registry.technique(technique).frameworks
        except SlimkitError:  # not installed
            return False

    def note(self, message: str) -> None:
        """One line on stderr (unless ``ui.quiet``): what happened to a trial."""
        import sys

        if not (self.run.spec.config.get("ui") or {}).get("quiet"):
            print(f"slimkit: search: {message}", file=sys.stderr)

    @property
    def trials_dir(self) -> Path:
        return Path(self.run.spec.run_dir) / "trials"

    def stages_for(self, params: Mapping[str, Any], seed_pipeline: str | None = None) -> dict[str, Any]:
        """The ``pipeline.stages`` of a trial: a seed pipeline's own stages, else the sampled ``params``'."""
        if seed_pipeline:
            if seed_pipeline not in self.cfg.seeds:
                raise ConfigError(
                    f"trial runs seed pipeline {seed_pipeline!r}, which is not in search.seeds "
                    f"({', '.join(sorted(self.cfg.seeds)) or 'none'}); compose it with "
                    f"+pipeline@search.seeds.{seed_pipeline}={seed_pipeline}"
                )
            return {k: dict(v) for k, v in dict(self.cfg.seeds[seed_pipeline]["stages"]).items()}
        return trial_stages(params, self.cfg, self.run.spec.model, self.layers)

    def spec_for(
        self, number: int, params: Mapping[str, Any], run_dir: Path, seed_pipeline: str | None = None
    ) -> RunSpec:
        """The :class:`RunSpec` of trial ``number``: the run's model, data and target, the trial's stages."""
        spec = self.run.spec
        registry = self.run.registry
        stages_cfg = self.stages_for(params, seed_pipeline)
        stages = []
        for name, params_ in stages_cfg.items():
            tech = registry.technique(params_["technique"])
            stages.append(StageSpec(name=name, technique=tech, config=tech.Config(**params_)))
        target = {**spec.target, **dict(self.cfg.trial_target)}
        tracking = dict(spec.tracking)
        if tracking.get("name", "none") != "none":
            tags = dict(tracking.get("tags") or {})
            parent = getattr(self.run.tracker, "run_id", None)
            if parent:
                tags["mlflow.parentRunId"] = str(parent)
            tags.update({"search.study": self.cfg.study, "search.trial": str(number), "search.worker": worker_id()})
            tracking.update({"tags": tags, "run_name": f"trial-{number}", "log_model": False})
        config = {
            "seed": spec.seed,
            "model": spec.model,
            "data": spec.data,
            "target": target,
            "tracking": {k: v for k, v in tracking.items() if k != "tags"},
            "pipeline": {"name": "search-trial", "stages": stages_cfg},
            "search": {
                "study": self.cfg.study,
                "trial": number,
                "params": dict(params),
                **({"seed_pipeline": seed_pipeline} if seed_pipeline else {}),
            },
            "ui": {"quiet": True, "progress": False},
        }
        return RunSpec(
            run_dir=run_dir,
            seed=spec.seed,
            model=dict(spec.model),
            data=dict(spec.data),
            target=target,
            tracking=tracking,
            stages=stages,
            cache_dir=spec.cache_dir,
            eval_batch_size=spec.eval_batch_size,
            config=redact(config),  # written and logged: no password (``tracking`` keeps the real URI)
            pipeline_name="search-trial",
        )

    def run_trial(
        self, number: int, params: Mapping[str, Any], run_dir: Path, seed_pipeline: str | None = None
    ) -> TrialMetrics:
        """Run the trial's stages through the core runner; return what the search needs of its report."""
        spec = self.spec_for(number, params, run_dir, seed_pipeline)
        runner = execute(spec, self.pm, self.run.registry, model=self.model, data=self.sctx.data)
        report = runner.report
        assert report.baseline is not None and report.compressed is not None
        base_p50 = float(report.baseline.latency_ms.get("p50") or math.nan)
        p50 = float(report.compressed.latency_ms.get("p50") or math.nan)
        return TrialMetrics(
            accuracy=report.compressed.accuracy,
            accuracy_drop=float(report.accuracy_drop or 0.0),
            speedup=base_p50 / p50 if p50 > 0 else 0.0,
            latency_ms=p50,
            baseline_latency_ms=base_p50,
            size_mb=report.compressed.size_bytes / 1e6,
            params=int(report.compressed.params),
        )

    def objective(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        """optuna's objective: sample, skip duplicates (pruned), run, record metrics and constraints."""
        import optuna

        seed = trial.user_attrs.get("seed_pipeline")
        if seed:  # an enqueued hand-made pipeline: its own stages, nothing sampled
            params: dict[str, Any] = {}
        else:
            space = active_space(self.cfg, self.run.spec.model, self.supported)
            params = {name: trial.suggest_categorical(name, values) for name, values in space.items()}
        label = f"pipeline={seed}" if seed else describe(params)
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("process", process_token())  # host:pid:start: tells a dead worker's trial
        trial.set_user_attr("label", label)
        self.started += 1
        self.sctx.progress(f"trial {trial.number} ({label})", self.started, None)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        for other in trial.study.get_trials(deepcopy=False, states=states):
            # Trials are deterministic: the same parameters give the same result (or the same error).
            if (
                other.params == params
                and other.user_attrs.get("seed_pipeline") == seed
                and ("metrics" in other.user_attrs or "error" in other.user_attrs)
            ):
                trial.set_user_attr("duplicate_of", other.number)
                for key in ("metrics", "error"):
                    if key in other.user_attrs:
                        trial.set_user_attr(key, other.user_attrs[key])
                if isinstance(other.user_attrs.get("metrics"), Mapping):
                    for name, value in violations(other.user_attrs["metrics"], self.cfg).items():
                        trial.set_constraint(name, value)
                raise optuna.TrialPruned(f"same parameters as trial {other.number}")
        run_dir = self.trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        self.recorder.trial = trial
        t0 = time.perf_counter()
        try:
            metrics = self.run_trial(trial.number, params, run_dir, seed)
        except Exception as exc:
            message = str(exc) if isinstance(exc, SlimkitError) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", " ".join(message.split())[:1000])
            self.note(f"trial {trial.number} ({label}) failed: {' '.join(message.split())[:300]}")
            if not isinstance(exc, SlimkitError):
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc())
            raise
        finally:
            self.recorder.trial = None
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        values = {k: v for k, v in vars(metrics).items()}
        trial.set_user_attr("metrics", values)
        for name, value in violations(values, self.cfg).items():
            trial.set_constraint(name, float(value))
        return tuple(metrics.objective(o) for o in self.cfg.objectives)


# -- results ----------------------------------------------------------------------------------------


def trial_rows(study: optuna.Study, cfg: SearchConfig) -> list[dict[str, Any]]:
    """Every trial of the study as a plain row: number, state, parameters, metrics, feasibility."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics")
        viol = violations(metrics, cfg) if isinstance(metrics, Mapping) else {}
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "label": t.user_attrs.get("label", describe(t.params)),
                "params": dict(t.params),
                "seed_pipeline": t.user_attrs.get("seed_pipeline"),
                # the model's parameter count is ``n_params``: ``params`` are the trial's parameters
                **(
                    {("n_params" if k == "params" else k): metrics[k] for k in metrics}
                    if isinstance(metrics, Mapping)
                    else {}
                ),
                "feasible": bool(metrics) and all(v <= 0 for v in viol.values()),
                "violations": viol,
                "seconds": t.user_attrs.get("seconds"),
                "worker": t.user_attrs.get("worker"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "error": t.user_attrs.get("error"),
                "duplicate_of": t.user_attrs.get("duplicate_of"),
            }
        )
    return rows


def _key(row: Mapping[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    return tuple(-float(row[o]) if o in MAXIMIZE else float(row[o]) for o in objectives)


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """The complete trials no other complete trial dominates on ``objectives`` (one per parameter set)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and all(_finite(r.get(o)) for o in objectives)]
    front = []
    for r in done:
        a = _key(r, objectives)
        dominated = any(
            all(x <= y for x, y in zip(_key(o, objectives), a, strict=True)) and _key(o, objectives) != a
            for o in done
            if o is not r
        )
        if not dominated:
            front.append(dict(r))
    front.sort(key=lambda r: _key(r, objectives))
    return front


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(float(x))


def pick_best(rows: Sequence[Mapping[str, Any]], cfg: SearchConfig) -> dict[str, Any] | None:
    """The best feasible complete trial: best first non-accuracy objective, then lowest accuracy drop."""
    feasible = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    if not feasible:
        return None
    primary = next((o for o in cfg.objectives if o != "accuracy_drop"), "accuracy_drop")
    sign = -1.0 if primary in MAXIMIZE else 1.0
    return dict(min(feasible, key=lambda r: (sign * float(r[primary]), float(r["accuracy_drop"]), r["trial"])))


def closest(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The complete trial that misses the constraints by the least (sum of relative violations)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("violations") is not None]
    if not done:
        return None
    return dict(min(done, key=lambda r: (sum(max(0.0, v) for v in r["violations"].values()), r["trial"])))


# -- the whole search -------------------------------------------------------------------------------


def seed_techniques(cfg: SearchConfig, name: str) -> list[str]:
    """The techniques of seed pipeline ``name``'s stages, in order."""
    stages = dict((cfg.seeds.get(name) or {}).get("stages") or {})
    return [str(dict(v).get("technique")) for v in stages.values()]


def enqueue_seeds(study: optuna.Study, cfg: SearchConfig, supported: Callable[[str], bool] | None = None) -> list[str]:
    """Queue the seed pipelines the study has not seen yet (first in line, once per study); return them.

    A seed already queued, running or finished in the study (by any worker) is not queued again; one
    with a technique that does not handle the model (``supported(technique)`` false) is not queued.
    """
    seen = {t.user_attrs.get("seed_pipeline") for t in study.get_trials(deepcopy=False)}
    todo = [
        name
        for name in cfg.seed_pipelines
        if name not in seen and (supported is None or all(supported(t) for t in seed_techniques(cfg, name)))
    ]
    for name in todo:
        study.enqueue_trial({}, user_attrs={"seed_pipeline": name})
    return todo


def run_search(cfg: SearchConfig, run: RunContext, model: Any, adapter: ModelAdapter, sctx: StageContext) -> Any:
    """Run this worker's share of the study, then return the best feasible model (an ONNX model).

    Raises :class:`SearchError` when no trial meets the constraints (the closest trial's model is
    kept in the stage's ``.failed`` directory) or when every trial failed.
    """
    study = _open(cfg, run, sctx)
    searcher = Searcher(cfg=cfg, run=run, model=model, adapter=adapter, sctx=sctx)
    enqueue_seeds(study, cfg, searcher.supported)
    unusable = [n for n in cfg.seed_pipelines if not all(searcher.supported(t) for t in seed_techniques(cfg, n))]
    if unusable:
        sctx.info["seeds_skipped"] = {n: f"a stage's technique does not handle {adapter.name} models" for n in unusable}
        searcher.note(f"seed pipelines {', '.join(unusable)} skipped: they cannot run on a {adapter.name} model")
    _optimize(study, cfg, searcher)
    rows = trial_rows(study, cfg)
    best = pick_best(rows, cfg)
    summary = _summarize(rows, best, cfg, searcher, run, sctx)
    if best is None:
        _no_feasible_trial(rows, summary, cfg, searcher, study, Path(sctx.work_dir))
    assert best is not None
    path = _load_trial_model(searcher, best, study)
    if path is None:
        raise SearchError(f"the model of the best trial {best['trial']} could not be rebuilt; re-run the search")
    sctx.metrics.update(
        {
            "best_trial": float(best["trial"]),
            "best_speedup": float(best["speedup"]),
            "best_accuracy_drop": float(best["accuracy_drop"]),
        }
    )
    return run.registry.adapter("onnx")().load_file(path)


def _open(cfg: SearchConfig, run: RunContext, sctx: StageContext) -> Any:
    """The study in ``cfg.storage``, its trials of dead workers failed (their tracker runs ended FAILED)."""
    import optuna

    logging.getLogger("optuna").setLevel(logging.ERROR)

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # The dead worker's trial run cannot end itself: end it FAILED in the shared tracking backend.
        run_id = trial.user_attrs.get("mlflow_run_id")
        reason = (
            f"search worker {trial.user_attrs.get('worker', '?')} stopped sending heartbeats during trial "
            f"{trial.number} (no heartbeat for {cfg.grace_s} s); the study marked the trial failed"
        )
        logging.getLogger(__name__).warning(reason)
        if run_id and run.tracker is not None:
            run.tracker.mark_failed(str(run_id), reason)

    storage = open_storage(cfg, on_stale)
    try:
        study = open_study(cfg, storage, int(sctx.seed) % (2**31))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # trials of workers that died
            fail_dead_trials(study, on_stale)  # ... before their first heartbeat
    except SlimkitError:
        raise
    except Exception as exc:
        raise SearchError(
            f"cannot use the study {cfg.study!r} in {mask_url(str(cfg.storage))}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}; check search.storage"
        ) from exc
    return study


def fail_dead_trials(study: Any, on_stale: Any) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone (``process`` user attribute)
    and call ``on_stale`` for each; returns their numbers. optuna's :func:`fail_stale_trials` skips a
    trial that has no heartbeat yet, and a worker killed before its heartbeat thread first wrote (a
    loaded machine, a locked SQLite file) would leave its trial RUNNING for good."""
    import optuna

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        token = trial.user_attrs.get("process")
        if token and token_dead(str(token)):
            if study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(trial.number)
                on_stale(study, study._storage.get_trial(trial._trial_id))
    return failed


def _optimize(study: Any, cfg: SearchConfig, searcher: Searcher) -> None:
    """Run trials until the study holds ``n_trials`` that ran (other workers' count too) or time is up."""
    import optuna

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in _COUNTED]
    todo = int(cfg.n_trials) - len(finished)
    if todo <= 0:
        return
    states = tuple(getattr(optuna.trial.TrialState, s) for s in _COUNTED)
    study.optimize(
        searcher.objective,
        n_trials=todo * (1 + DUPLICATES_PER_TRIAL),  # the callback stops at n_trials that ran
        timeout=cfg.timeout_s,
        catch=(Exception,),
        callbacks=[optuna.study.MaxTrialsCallback(int(cfg.n_trials), states=states)],
    )


def _summarize(
    rows: list[dict[str, Any]],
    best: Mapping[str, Any] | None,
    cfg: SearchConfig,
    searcher: Searcher,
    run: RunContext,
    sctx: StageContext,
) -> dict[str, Any]:
    """The study's summary, trials.json, the Pareto plot, the stage's info and metrics, the report's section."""
    from .report import add_search_section, pareto_plot

    front = pareto_front(rows, cfg.objectives)
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    summary = {
        "study": cfg.study,
        "storage": mask_url(str(cfg.storage)),
        "sampler": cfg.sampler,
        "objectives": list(cfg.objectives),
        "constraints": cfg.constraints(),
        "trials": counts,
        "trials_this_worker": searcher.started,
        "best_trial": best["trial"] if best else None,
    }
    work = Path(sctx.work_dir)
    _write_json(work / "trials.json", rows)
    sctx.artifacts["trials"] = work / "trials.json"
    plot = work / "pareto.png"
    try:
        pareto_plot(rows, front, best, cfg, plot)
        sctx.artifacts["pareto_plot"] = plot
    except Exception as exc:  # a plot is a convenience; say why it is missing
        sctx.info["plot_error"] = f"{type(exc).__name__}: {exc}"
    sctx.info.update({"search": summary, "pareto": front})
    sctx.metrics.update({f"trials_{k.lower()}": float(v) for k, v in counts.items()})
    add_search_section(run.report, {"search": summary, "pareto": front})
    return summary


def _no_feasible_trial(
    rows: list[dict[str, Any]], summary: dict[str, Any], cfg: SearchConfig, searcher: Searcher, study: Any, work: Path
) -> None:
    """Raise the one-line :class:`SearchError` of a search without a feasible trial (keep the closest model)."""
    near = closest(rows)
    if near is None:
        errors = [r["error"] for r in rows if r.get("error")]
        raise SearchError(
            f"no trial of study {cfg.study!r} finished ({summary['trials']['FAIL']} failed"
            + (f"; first error: {errors[0][:200]}" if errors else "")
            + "); fix the error or narrow search.space, then re-run to continue the study"
        )
    summary["closest_trial"] = near["trial"]
    missed = [k for k, v in near["violations"].items() if v > 0]
    bounds = cfg.constraints()
    candidate = _load_trial_model(searcher, near, study)
    if candidate is not None:
        shutil.copy2(candidate, work / "closest_model.onnx")
    raise SearchError(
        f"no trial meets {', '.join(f'{k}={bounds[k]:g}' for k in missed)}; closest: trial {near['trial']} "
        f"({near['label']}): accuracy drop {near['accuracy_drop']:.2f} pt, speedup {near['speedup']:.2f}x, "
        f"latency {near['latency_ms']:.3f} ms, size {near['size_mb']:.3f} MB"
        + (" (its model is kept in the stage's .failed directory)" if candidate is not None else "")
        + "; relax the constraint or add trials (search.n_trials)"
    )


def _load_trial_model(searcher: Searcher, row: Mapping[str, Any], study: Any) -> Path | None:
    """The ONNX file of trial ``row``: its run directory if it is on this machine, else re-run here."""
    frozen = study.trials[int(row["trial"])]
    local = frozen.user_attrs.get("run_dir")
    if local and frozen.user_attrs.get("host") == socket.gethostname():
        path = Path(local) / "model.onnx"
        if path.is_file():
            return path
    # Another worker ran it: rebuild it here (the same stages and seeds give the same model).
    run_dir = searcher.trials_dir / f"rerun-{int(row['trial']):04d}"
    try:
        searcher.run_trial(int(row["trial"]), row["params"], run_dir, row.get("seed_pipeline"))
    except SlimkitError:
        return None
    path = run_dir / "model.onnx"
    return path if path.is_file() else None


def _write_json(path: Path, obj: Any) -> None:
    import json

    from slimkit.core import files

    files.write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
