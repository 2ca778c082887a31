"""The ``slimkit`` command line: Hydra for config and sweeps, plus a few subcommands.

``slimkit [overrides]`` runs a pipeline; ``slimkit plugins`` lists plugins. A user error prints one
line on stderr and exits 2 (``SLIMKIT_DEBUG=1`` adds the traceback); a bug exits 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from slimkit.core import SlimkitError

EXIT_USAGE = 2
_state: dict[str, Any] = {"exit": 0}


def _debug() -> bool:
    return bool(os.environ.get("SLIMKIT_DEBUG"))


def _error(exc: BaseException) -> None:
    if _debug():
        traceback.print_exception(exc)
    print(f"slimkit: error: {exc}", file=sys.stderr)


def _task(cfg: Any) -> None:
    """The Hydra task: one run of the composed config."""
    from hydra.core.hydra_config import HydraConfig

    from .config import to_plain
    from .run import record_failure, run_config

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain: dict[str, Any] = {}
    try:
        plain = to_plain(cfg)
        run_config(plain, run_dir)
    except SlimkitError as exc:
        if not plain:
            record_failure({}, run_dir, exc)
        _error(exc)
        _state["exit"] = max(_state["exit"], exc.exit_code)
    except KeyboardInterrupt:
        print("slimkit: interrupted; finished stages are kept in the run directory", file=sys.stderr)
        _state["exit"] = 130
    except Exception as exc:
        traceback.print_exception(exc)
        print(
            f"slimkit: internal error: {type(exc).__name__}: {exc} -- this is a bug in slimkit or a plugin; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        _state["exit"] = max(_state["exit"], 1)


def _is_multirun(args: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def _wants_info(args: list[str]) -> bool:
    return any(
        a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion")
        or a.startswith(("--cfg=", "--info="))
        for a in args
    )


def _precheck(args: list[str]) -> None:
    """Compose once before Hydra runs, so bad overrides give one line and a FAILED tracker run."""
    from .config import compose, to_plain
    from .run import record_failure

    overrides = [a for a in args if not a.startswith("-")]
    try:
        compose(overrides)
    except SlimkitError as exc:
        # Record the failure with whatever tracking settings the valid overrides give.
        tracking = [o for o in overrides if o.lstrip("+~").startswith("tracking")]
        try:
            plain = to_plain(compose(tracking))
        except SlimkitError:
            plain = {}
        record_failure(plain, Path("outputs") / "failed", exc)
        raise


GROUPS = ("pipeline", "model", "data", "technique", "target", "tracking")

HELP_HEADER = """\
slimkit: make a trained model smaller and faster, and prove it with numbers measured on the target.

Usage:
  slimkit [group=option ...] [key=value ...]      one run (an MLflow run in ./mlflow.db)
  slimkit -m key=a,b,c ...                        a sweep: one run per combination
  slimkit plugins                                 list plugins, versions and hooks
  slimkit --cfg job                               print the composed config and exit

Examples:
  slimkit                                          bundled digits ResNet, default pipeline, CPU
  slimkit pipeline.stages.prune.sparsity=0.7       any value is an override
  slimkit technique@pipeline.stages.prune=finetune swap the technique of a stage
  slimkit model=torch model.factory=my.pkg:build model.weights=w.pt data=digits
  slimkit -m pipeline.stages.prune.sparsity=0.3,0.5,0.7
  slimkit tracking.uri=http://mlflow:5000 tracking.experiment=team-a
Outputs go to outputs/DATE/TIME/ (report.json, report.md, model.onnx, model.pt, stages/).
Errors print one line and exit 2; SLIMKIT_DEBUG=1 shows the traceback.
"""


def help_command(args: list[str]) -> int:
    """``slimkit --help``: usage, config groups and their options, and the composed config.

    Hydra's own help lists groups by copying its whole config repository once per group (seconds);
    this reads the group folders and the ConfigStore directly and composes once.
    """
    import importlib.resources

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from slimkit.core.plugins import get_registry

    from .config import CONFIG_MODULE, compose

    overrides = [a for a in args if not a.startswith("-")]
    cfg = compose(overrides)
    root = importlib.resources.files(CONFIG_MODULE)
    store = ConfigStore.instance().repo
    lines = [HELP_HEADER.rstrip(), "", "== Config groups (choose one option each: group=option) =="]
    registry = get_registry()
    for group in GROUPS:
        options: dict[str, str] = {}
        for path in root.joinpath(group).iterdir():
            if path.name.endswith(".yaml"):
                first = path.read_text().splitlines()[:1]
                options[path.name[: -len(".yaml")]] = (
                    first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
                )
        for name in store.get(group, {}):
            stem = name[: -len(".yaml")]
            if group == "technique" and stem not in options:
                options[stem] = getattr(registry.techniques.get(stem), "description", "") + " (plugin)"
        lines.append(f"{group}:")
        width = max((len(n) for n in options), default=0)
        lines += [f"  {n.ljust(width)}  {d}" for n, d in sorted(options.items())]
    lines += ["", "== Composed config (override any value: key=value) ==", "", OmegaConf.to_yaml(cfg).rstrip(), ""]
    lines.append("Hydra's own options: slimkit --hydra-help")
    print("\n".join(lines))
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
    Console(soft_wrap=True).print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slimkit`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "plugins":
            return plugins_command(args[1:])
        if args and args[0] in ("--version", "-V"):
            from slimkit import __version__

            print(f"slimkit {__version__}")
            return 0
        from slimkit.core.plugins import get_registry

        from .config import register_schemas

        register_schemas(get_registry())
        if any(a in ("--help", "-h") for a in args):
            return help_command(args)
        if not _is_multirun(args) and not _wants_info(args):
            _precheck(args)
    except SlimkitError as exc:
        _error(exc)
        return EXIT_USAGE

    import hydra

    from .config import CONFIG_MODULE, CONFIG_NAME

    _state["exit"] = 0
    task = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME, version_base=None)(_task)
    saved = sys.argv
    sys.argv = ["slimkit", *args]
    try:
        task()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code:
            return EXIT_USAGE if code == 1 and not _state["exit"] else max(code, _state["exit"])
    finally:
        sys.argv = saved
    return int(_state["exit"])


if __name__ == "__main__":
    raise SystemExit(main())
