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
