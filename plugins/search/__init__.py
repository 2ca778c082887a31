"""``pipeline=search``: a multi-objective compression search (optuna) under constraints measured on the target.

The ``search`` technique runs an optuna study whose trials are ordinary slimkit runs (stages of the
registered techniques, measured by the run's target, each a tracker child run of the search's run);
it returns the best trial within the constraints as the stage's model, so the run's report, exported
``model.onnx`` and MLflow run are those of a normal run, plus the Pareto front. See ``docs/SEARCH.md``.

Hooks: the technique is registered like any other; ``slimkit_run_start`` checks the study storage
before any work (one line, within seconds) and gives the report its Pareto section; the technique
gets the running run (target, tracker, run directory) from its stage context (``ctx.run``);
``slimkit_run_end``/``slimkit_run_failed`` print the Pareto table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimkit.core import Technique, TechniqueError, hookimpl

from .config import SearchConfig

if TYPE_CHECKING:
    from slimkit.core.adapter import ModelAdapter
    from slimkit.core.registry import Registry
    from slimkit.core.report import Report, StageResult
    from slimkit.core.run import RunContext
    from slimkit.core.technique import StageContext


class Search(Technique):
    """Search technique combinations and parameters with optuna; return the best model within constraints."""

    name = "search"
    description = "multi-objective search over compression techniques (optuna), constraints measured on the target"
    frameworks = ("torch", "onnx")
    output_framework = "onnx"
    Config = SearchConfig

    def apply(self, model: Any, adapter: ModelAdapter, ctx: StageContext) -> Any:
        run = ctx.run
        if run is None:
            raise TechniqueError("the search technique runs only inside a slimkit run; use pipeline=search")
        from .study import run_search

        assert isinstance(self.config, SearchConfig)
        return run_search(self.config, run, model, adapter, ctx)


def _search_configs(ctx: RunContext) -> list[SearchConfig]:
    return [s.config for s in ctx.spec.stages if isinstance(s.config, SearchConfig)]


@hookimpl
def slimkit_register_techniques(registry: Registry) -> None:
    """Register :class:`Search` as the ``search`` technique."""
    registry.add_technique(Search)


@hookimpl
def slimkit_run_start(ctx: RunContext) -> None:
    """For a search run: check the storage (fails fast, naming the URL); report with a Pareto section."""
    configs = _search_configs(ctx)
    if not configs:
        return
    from .report import add_search_section
    from .study import check_storage

    add_search_section(ctx.report, None)  # report.json gets "search" and "pareto", filled when it has run
    for cfg in configs:
        check_storage(str(cfg.storage))


@hookimpl
def slimkit_stage_end(ctx: RunContext, result: StageResult) -> None:
    """A search stage (run or taken from the cache): its Pareto front goes into the run's report."""
    if result.technique == Search.name and "search" in result.info:
        from .report import add_search_section

        add_search_section(ctx.report, {"search": result.info["search"], "pareto": result.info.get("pareto", [])})


def _print(ctx: RunContext, report: Report | None) -> None:
    if report is None or not _search_configs(ctx) or (ctx.spec.config.get("ui") or {}).get("quiet"):
        return
    from .report import print_pareto, search_section

    section = search_section(report)
    if section:
        print_pareto(section)


@hookimpl
def slimkit_run_end(ctx: RunContext, report: Report) -> None:
    """Print the Pareto front after a search run."""
    _print(ctx, report)


@hookimpl
def slimkit_run_failed(ctx: RunContext, error: BaseException, report: Report | None) -> None:
    """Print the Pareto front of a failed search (e.g. no trial met the constraints)."""
    _print(ctx, report)
