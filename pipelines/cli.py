"""The ``slimkit`` command line: Hydra for config and sweeps, plus a few subcommands.

``slimkit [overrides]`` runs a pipeline; ``slimkit plugins`` lists plugins. A user error prints one
line on stderr and exits 2 (``SLIMKIT_DEBUG=1`` adds the traceback); a bug exits 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimkit.core import ConfigError, SlimkitError

EXIT_USAGE = 2
_state: dict[str, Any] = {"exit": 0}


def _debug() -> bool:
    return bool(os.environ.get("SLIMKIT_DEBUG"))


def _print_traceback(exc: BaseException) -> None:
    """``exc``'s traceback on stderr, passwords redacted."""
    from slimkit.core.secrets import redact_text

    print(redact_text("".join(traceback.format_exception(exc))).rstrip("\n"), file=sys.stderr)


def _error(exc: BaseException) -> None:
    from slimkit.core.secrets import redact_text

    if _debug():
        _print_traceback(exc)
    print(f"slimkit: error: {redact_text(str(exc))}", file=sys.stderr)


def _redact_hydra_files() -> None:
    """Rewrite what Hydra saved of the job's config (``.hydra/config.yaml``, ``hydra.yaml``,
    ``overrides.yaml``, and a sweep's ``multirun.yaml``) with secrets redacted
    (:func:`slimkit.core.secrets.redact`: URL passwords, keys named like ``password``). Hydra writes
    them before the job starts; a file with nothing to redact is left as Hydra wrote it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from slimkit.core.secrets import redact

    hc = HydraConfig.get()
    paths = []
    if hc.output_subdir is not None:
        folder = Path(hc.runtime.output_dir) / str(hc.output_subdir)
        paths += [folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if hc.mode == RunMode.MULTIRUN:
        paths.append(Path(str(hc.sweep.dir)) / "multirun.yaml")
    for path in paths:
        try:
            saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:  # not written (output_subdir: null) or unreadable: nothing to redact
            continue
        clean = redact(saved)
        if clean != saved:
            path.write_text(OmegaConf.to_yaml(OmegaConf.create(clean)), encoding="utf-8")


@contextlib.contextmanager
def _plain_warnings() -> Iterator[None]:
    """During the run, slimkit's own log warnings (loggers ``slimkit.*``) are one plain line on
    stderr, ``slimkit: warning: ...``, not in Hydra's ``[time][HYDRA]`` format."""
    import logging

    class Plain(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"slimkit: {record.levelname.lower()}: {record.getMessage()}"

    logger = logging.getLogger("slimkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(Plain())
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _task(cfg: Any) -> None:
    """The Hydra task: one run of the composed config."""
    from hydra.core.hydra_config import HydraConfig

    from .config import to_plain
    from .run import record_failure, run_config

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain: dict[str, Any] = {}
    try:
        _redact_hydra_files()
        plain = to_plain(cfg)
        with _signals_interrupt(), _plain_warnings():
            run_config(plain, run_dir)
    except SlimkitError as exc:
        if not plain:  # the config did not resolve: record with its tracking settings, if they do
            record_failure(_tracking_only(cfg), run_dir, exc)
        _error(exc)
        _state["exit"] = max(_state["exit"], exc.exit_code)
    except KeyboardInterrupt as exc:
        what = str(exc) or "interrupted by SIGINT"
        print(f"slimkit: {what}; finished stages are kept in the run directory", file=sys.stderr)
        _state["exit"] = 143 if "SIGTERM" in what else 130
    except Exception as exc:
        from slimkit.core.secrets import redact_text

        _print_traceback(exc)
        print(
            f"slimkit: internal error: {type(exc).__name__}: {redact_text(str(exc))} -- this is a bug in slimkit "
            "or a plugin; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        _state["exit"] = max(_state["exit"], 1)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`~slimkit.core.errors.Interrupted` in the run (main thread
    only), so it ends FAILED with a partial report instead of dying mid-write."""
    import signal
    import threading

    from slimkit.core.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _tracking_only(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return {"tracking": OmegaConf.to_container(cfg.tracking, resolve=True)}
    except Exception:
        return {}


def _is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def _wants_info(args: list[str]) -> bool:
    return any(
        a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion")
        or a.startswith(("--cfg=", "--info="))
        for a in args
    )


def _overrides(args: list[str]) -> list[str]:
    """The overrides among ``args`` as Hydra's argument parser sees them (``--cfg job`` is no override)."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            namespace, _ = get_args_parser().parse_known_args(args)
    except SystemExit:  # bad options: Hydra reports them itself
        return []
    return list(namespace.overrides or [])


def _first_job(overrides: list[str]) -> list[str] | None:
    """A sweep's first job: every sweep (``a=1,2``, ``choice``, ``range``) set to its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        out = []
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.is_sweep_override():
                out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
            else:
                out.append(o.input_line or "")
        return out
    except Exception:  # a glob sweep or a syntax error: leave the checking to Hydra
        return None


def _precheck(args: list[str], *, sweep: bool = False, record: bool = True) -> None:
    """Compose once before Hydra runs, so bad overrides give one line (``did you mean ...?``) and
    touch nothing: no tracker store, no run directory.

    ``sweep``: check a multirun's first job; ``record``: the sweep would start (not ``--cfg``), so
    also check that its folder can be made, recording a FAILED tracker run when it cannot.
    """
    from .config import compose

    overrides: list[str] | None = _overrides(args)
    if sweep:
        overrides = _first_job(overrides)
        if overrides is None:
            return
    compose(overrides)
    if sweep and record:
        try:
            _check_sweep_dir(overrides)
        except SlimkitError as exc:
            _record_run_dir_failure(overrides, exc, _sweep_dir(overrides))
            raise


def _check_sweep_dir(overrides: list[str]) -> None:
    """Raise a one-line :class:`ConfigError` unless a multirun's folder (``hydra.sweep.dir``, default
    ``multirun/...`` here) can be created: Hydra's sweeper creates it with a traceback on failure.

    A folder is made and removed in its nearest existing parent (a permission check alone would
    pass for root in ``/proc``)."""
    import tempfile

    folder = _sweep_dir(overrides)
    parent = folder.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".slimkit-check-", dir=parent))
    except OSError as exc:
        raise ConfigError(
            f"cannot create the sweep directory {str(folder)!r} ({exc.strerror or exc}); run slimkit in a "
            "writable folder or set hydra.sweep.dir=<writable folder>"
        ) from None


def _sweep_dir(overrides: list[str]) -> Path:
    """A multirun's folder as far as it is known before Hydra resolves it (``hydra.sweep.dir`` up to
    its first interpolation; default ``multirun``)."""
    given = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra.sweep.dir=")), None)
    return Path((given or "multirun").split("${", 1)[0] or ".")


def _single_run(args: list[str]) -> list[str] | None:
    """The overrides of ``args`` when they ask for one plain run (no Hydra option, no sweep), else None."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            namespace, extra = get_args_parser().parse_known_args(args)
    except SystemExit:
        return None
    options = {k: v for k, v in vars(namespace).items() if k not in ("overrides", "run")}
    if extra or any(v not in (None, False) for v in options.values()):
        return None
    overrides = list(namespace.overrides or [])
    if any(o.lstrip("+~").startswith("hydra.mode") for o in overrides):
        return None
    return overrides


def _record_run_dir_failure(overrides: list[str], exc: SlimkitError, folder: Path) -> None:
    """Record a run or sweep whose folder cannot be made as a FAILED tracker run, with the tracking
    settings of its (composing) overrides. Config errors are not recorded: they open no store."""
    from .config import compose, to_plain
    from .run import record_failure

    tracking = [o for o in overrides if o.lstrip("+~").startswith("tracking")]
    try:
        plain = to_plain(compose(tracking))
    except SlimkitError:
        plain = {}
    record_failure(plain, folder, exc)


def _run_once(overrides: list[str]) -> None:
    """One run, its config composed once: what ``hydra.main`` does for it (``Hydra.run``: the run
    directory, ``.hydra/``, logging, callbacks, the job), without composing twice more first (the
    precheck, then Hydra's ``get_mode``). A config that does not compose raises a one-line
    :class:`~slimkit.core.ConfigError` before any tracker store is opened, as the precheck does.
    """
    from hydra import version
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import (
        create_automatic_config_search_path,
        detect_calling_file_or_module_from_task_function,
        detect_task_name,
        run_and_report,
    )
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode

    from .config import CONFIG_MODULE, CONFIG_NAME, hydra_error_line

    version.setbase(None)
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(_task)
    search_path = create_automatic_config_search_path(calling_file, calling_module, f"pkg://{CONFIG_MODULE}")
    hydra_app = Hydra.create_main_hydra2(
        task_name=detect_task_name(calling_file, calling_module), config_search_path=search_path
    )
    try:
        try:
            cfg = hydra_app.compose_config(
                config_name=CONFIG_NAME,
                overrides=[*overrides, "hydra.mode=RUN"],  # what hydra.main adds for a run
                run_mode=RunMode.RUN,
                with_log_configuration=True,
                from_shell=False,  # the precheck's wording of errors
            )
        except Exception as exc:
            if isinstance(exc, SlimkitError):
                raise
            raise ConfigError(hydra_error_line(exc)) from exc

        try:
            _claim_run_dir(cfg)
        except ConfigError as exc:  # an unwritable run directory: one line, recorded where tracking can
            _record_run_dir_failure(overrides, exc, Path(str(cfg.hydra.run.dir)))
            raise

        def run() -> None:
            callbacks = Callbacks(cfg)
            callbacks.on_run_start(config=cfg, config_name=CONFIG_NAME)
            ret = run_job(
                hydra_context=HydraContext(config_loader=hydra_app.config_loader, callbacks=callbacks),
                task_function=_task,
                config=cfg,
                job_dir_key="hydra.run.dir",
                job_subdir_key=None,
                configure_logging=True,
            )
            callbacks.on_run_end(config=cfg, config_name=CONFIG_NAME, job_return=ret)
            _ = ret.return_value  # raises if the job raised, as Hydra.run does

        run_and_report(run)
    finally:
        GlobalHydra.instance().clear()


def _claim_run_dir(cfg: Any) -> Path:
    """Create this run's directory atomically and point ``hydra.run.dir`` at it: the configured one
    (``outputs/<date>/<time>``), or with ``-1``, ``-2``... when another run took it (two runs started
    in the same second, or a folder named explicitly and used before). Never two runs in one folder."""
    from omegaconf import open_dict, read_write

    base = Path(str(cfg.hydra.run.dir))
    for i in range(10_000):
        candidate = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(
                f"cannot create the run directory {str(candidate)!r} ({exc.strerror or exc}); "
                "run slimkit in a writable folder or set hydra.run.dir=<writable folder>"
            ) from None
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.run.dir = str(candidate)
        return candidate
    raise ConfigError(f"every run directory {base}[-N] is taken; set hydra.run.dir=<new folder>")


GROUPS = ("pipeline", "model", "data", "technique", "target", "tracking", "search")

HELP_HEADER = """\
slimkit: make a trained model smaller and faster, and prove it with numbers measured on the target.

Usage:
  slimkit [group=option ...] [key=value ...]      one run (an MLflow run in ./mlflow.db)
  slimkit -m key=a,b,c ...                        a sweep: one run per combination
  slimkit plugins                                 list plugins, versions and hooks
  slimkit inspect FILE.onnx                       opsets, inputs/outputs, size, ops and weights of an ONNX file
  slimkit compare RUN_ID ... [--out DIR]          MLflow runs side by side: a table and accuracy/latency/size plots
  slimkit generate RUN_DIR "prompt"               a greedy completion from an LLM run's model (onnxruntime-genai)
  slimkit --cfg job                               print the composed config and exit

Examples:
  slimkit                                          bundled digits ResNet, default pipeline, CPU
  slimkit pipeline.stages.prune.ratio=0.3          any value is an override
  slimkit pipeline=quantize target=npu             int8 that runs wholly on the Qualcomm HTP
  slimkit pipeline=magnitude technique@pipeline.stages.prune=finetune   swap a stage's technique
  slimkit pipeline=search search.n_trials=20       search techniques under constraints (optuna)
  slimkit model=torch model.factory=mynet:build model.weights=w.pt data=digits   your module (see README)
  slimkit model=mlflow model.uri=models:/NAME/1 tracking.register=NAME   a registered model in, a version out
  slimkit model=onnx model.path=m.onnx data=npz data.path=d.npz pipeline=sparse
  slimkit -m pipeline.stages.prune.ratio=0.3,0.5,0.7
  slimkit tracking.uri=http://mlflow:5000 tracking.experiment=team-a
Outputs go to outputs/DATE/TIME/ (report.json, report.md, model.onnx, stages/; model.pt when the result is torch).
Errors print one line and exit 2; SLIMKIT_DEBUG=1 shows the traceback.
"""


def _description(yaml_text: str) -> str:
    """The first whole sentence of a YAML file's leading comment block (its description in ``--help``).

    A sentence ends at ``.``, ``!`` or ``?`` followed by a space or the end, outside parentheses and
    not after an abbreviation (``e.g.``); the lines of the block are joined first.
    """
    comment = []
    for line in yaml_text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(c for c in comment if c)
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        end = i + 1 == len(text) or text[i + 1] == " "
        if ch in ".!?" and depth <= 0 and end and not text[: i + 1].endswith(("e.g.", "i.e.", "etc.", "vs.")):
            return text[: i + 1]
    return text


def _help_cache(args: list[str], registry: Any) -> tuple[Path, str]:
    """Where ``slimkit ARGS --help`` is cached (``$XDG_CACHE_HOME/slimkit/help/``, one file per ARGS)
    and the key its first line must be: a hash of the Python, ARGS, what the plugins registered
    (``registry.owners``: ``SLIMKIT_DISABLED_PLUGINS`` changes it) and the size and mtime of every
    file the text comes from (``conf/``'s YAML files and every module outside the standard library
    imported once the plugins are loaded: slimkit, third-party plugins; Hydra's and OmegaConf's
    ``__init__.py``), so editing or installing anything recomputes it."""
    import hashlib
    import importlib.resources
    import importlib.util

    from .config import CONFIG_MODULE

    stdlib = os.path.dirname(os.__file__) + os.sep  # covered by sys.version
    files = {
        str(m.__file__)
        for name, m in list(sys.modules.items())
        if getattr(m, "__file__", None) and name != "__main__" and not str(m.__file__).startswith(stdlib)
    }
    files.add(__file__)  # this module: `__main__` under `python -m`, not under the console script
    for package in ("hydra", "omegaconf"):  # not imported on a cache hit; an upgrade rewrites __init__.py
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(package)
            files.add(str(spec.origin if spec is not None else ""))
    try:
        root = importlib.resources.files(CONFIG_MODULE)
        files |= {str(p) for d in root.iterdir() for p in (d.iterdir() if d.is_dir() else [d])}
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    key = hashlib.sha256(repr((sys.executable, sys.version, args, sorted(registry.owners.items()))).encode())
    for name in sorted(files):
        with contextlib.suppress(OSError):
            stat = os.stat(name)
            key.update(f"{name}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimkit" / "help"
    return base / f"{hashlib.sha256(repr(args).encode()).hexdigest()[:16]}.txt", key.hexdigest()


def _write_help_cache(cache: Path, content: str) -> None:
    """Write ``content`` to ``cache`` atomically; a cache that cannot be written (read-only home) is
    skipped: the next ``--help`` composes again."""
    import tempfile

    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=cache.parent, delete=False) as f:
            tmp = f.name
            f.write(content)
        os.replace(tmp, cache)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _print_help(text: str) -> None:
    try:
        print(text)
    except BrokenPipeError:  # `slimkit --help | head`: the reader stopped early, which is fine
        sys.stdout = None


def help_command(args: list[str]) -> int:
    """``slimkit --help``: usage, config groups and their options, and the composed config.

    Hydra's own help lists groups by copying its whole config repository once per group (seconds);
    this reads the group folders and the ConfigStore directly and composes once. The text is cached
    (:func:`_help_cache`): a second ``--help`` loads the plugins but neither Hydra nor the configs.
    """
    import importlib.resources

    from slimkit.core.plugins import get_registry

    registry = get_registry()
    cache, key = _help_cache(args, registry)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        cached_key, _, text = cache.read_text(encoding="utf-8").partition("\n")
        if cached_key == key:
            _print_help(text)
            return 0

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from .config import CONFIG_MODULE, compose

    overrides = [a for a in args if not a.startswith("-")]
    cfg = compose(overrides)
    root = importlib.resources.files(CONFIG_MODULE)
    store = ConfigStore.instance().repo
    lines = [HELP_HEADER.rstrip(), "", "== Config groups (choose one option each: group=option) =="]
    for group in GROUPS:
        options: dict[str, str] = {}
        for path in root.joinpath(group).iterdir():
            if path.name.endswith(".yaml"):
                options[path.name[: -len(".yaml")]] = _description(path.read_text())
        for name in store.get(group, {}):
            stem = name[: -len(".yaml")]
            if group == "technique" and stem not in options:
                options[stem] = getattr(registry.techniques.get(stem), "description", "") + " (plugin)"
        lines.append(f"{group}:")
        width = max((len(n) for n in options), default=0)
        lines += [f"  {n.ljust(width)}  {d}" for n, d in sorted(options.items())]
    lines += ["", "== Composed config (override any value: key=value) ==", "", OmegaConf.to_yaml(cfg).rstrip(), ""]
    lines.append("Hydra's own options: slimkit --hydra-help")
    text = "\n".join(lines)
    _write_help_cache(cache, f"{key}\n{text}")
    _print_help(text)
    return 0


def plugins_command(args: list[str]) -> int:
    """``slimkit plugins``: a table of plugins, what they provide, versions and hooks."""
    from rich.console import Console
    from rich.table import Table

    from slimkit.core.plugins import get_registry, list_plugins

    registry = get_registry()
    provides: dict[str, list[str]] = {}
    for (kind, name), owner in registry.owners.items():
        provides.setdefault(owner, []).append(f"{kind} {name}")
    table = Table(title="slimkit plugins", title_justify="left")
    for col in ("name", "version", "module", "provides", "hooks"):
        table.add_column(col)
    for info in list_plugins():
        table.add_row(
            info.name + ("" if info.builtin else " (installed)"),
            info.version,
            info.module,
            "\n".join(sorted(provides.get(info.name, []))),
            "\n".join(h.removeprefix("slimkit_") for h in info.hooks),
        )
    # Piped (not a terminal, no $COLUMNS), rich would cut cells to 80 columns ("magnitude_pru…").
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    Console(soft_wrap=True, width=200 if wide else None).print(table)
    return 0


def inspect_command(args: list[str]) -> int:
    """``slimkit inspect FILE.onnx`` (or ``model=onnx model.path=FILE``): opsets, inputs/outputs, sizes,
    ops and params. A plain path is read as it is (no Hydra grammar: spaces and commas are fine)."""
    from slimkit.plugins.onnx.inspect import inspect_command as inspect_model_command

    args = [a for a in args if not a.startswith("-")]
    paths = [a for a in args if "=" not in a or Path(a).is_file()]
    overrides = [a for a in args if a not in paths]
    if len(paths) > 1:
        raise ConfigError(f"slimkit inspect reads one model file, got {len(paths)}; run it once per file")
    if paths and not overrides:  # nothing to compose: the file is all there is
        return inspect_model_command({"adapter": "onnx", "path": paths[0]})
    from .config import compose, to_plain

    if paths and not any(o.startswith("model=") for o in overrides):
        overrides.insert(0, "model=onnx")
    model = to_plain(compose(overrides))["model"]
    if paths:
        model["path"] = paths[0]
    return inspect_model_command(model)


def compare_command(args: list[str]) -> int:
    """``slimkit compare RUN_ID... [--experiment NAME] [--out DIR]``: runs side by side (:mod:`.compare`)."""
    from .compare import compare_command as run_compare

    return run_compare(args)


def generate_command(args: list[str]) -> int:
    """``slimkit generate RUN_DIR PROMPT [--max-new-tokens N] [--threads N]``: a completion (:mod:`.generate`)."""
    from .generate import generate_command as run_generate

    return run_generate(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slimkit`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    from slimkit.core.secrets import redact_logs

    redact_logs()  # Hydra's launcher logs the jobs' overrides, passwords included
    try:
        if args and args[0] == "plugins":
            return plugins_command(args[1:])
        if args and args[0] == "inspect":
            return inspect_command(args[1:])
        if args and args[0] == "compare":
            return compare_command(args[1:])
        if args and args[0] == "generate":
            return generate_command(args[1:])
        if args and args[0] in ("--version", "-V"):
            from slimkit import __version__

            print(f"slimkit {__version__}")
            return 0
        if any(a in ("--help", "-h") for a in args):
            return help_command(args)
        from slimkit.core.plugins import get_registry

        from .config import register_schemas

        register_schemas(get_registry())
        single = _single_run(args)
        # A single run composes its config once, in _run_once; anything else (a sweep, --cfg, Hydra's
        # options) is checked here first, then composed by hydra.main.
        if single is None and not any(a in ("--hydra-help", "--shell-completion", "-sc") for a in args):
            _precheck(args, sweep=_is_multirun(args), record=not _wants_info(args))
    except SlimkitError as exc:
        _error(exc)
        return EXIT_USAGE

    import hydra

    from .config import CONFIG_MODULE, CONFIG_NAME

    _state["exit"] = 0
    saved = sys.argv
    sys.argv = ["slimkit", *args]
    try:
        if single is not None:
            _run_once(single)
        else:
            hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base=None)(_task)()
    except SlimkitError as exc:  # the single run's config does not compose
        _error(exc)
        return EXIT_USAGE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            return EXIT_USAGE if code == 1 and not _state["exit"] else max(code, _state["exit"])
    finally:
        sys.argv = saved
    return int(_state["exit"])


if __name__ == "__main__":
    raise SystemExit(main())
