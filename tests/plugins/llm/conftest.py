"""Fixtures of the language-model tests: the settings of a short CLI run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def llm_quick_args() -> list[str]:
    """Overrides for a short language-model CLI run: 32-token windows, batch 1 on ONNX Runtime, few timings."""
    return [
        "data=text",
        "data.max_length=32",
        "target.repeats=3",
        "target.warmup=1",
        "target.max_seconds=2",
        "target.batch_sizes=[1]",
        "target.runtimes=[onnxruntime]",
    ]


@pytest.fixture(scope="session")
def llm_bench_env() -> dict[str, str]:
    """The environment that keeps the report's LLM measurements small (slimkit.plugins.llm.measure)."""
    return {"SLIMKIT_LLM_BENCH": "prompt=16,new=8,gen=8,prompts=2,rounds=2,repeats=2"}
