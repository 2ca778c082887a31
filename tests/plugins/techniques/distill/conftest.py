"""Fixtures of the ``distill`` tests beyond tests/plugins/techniques/conftest.py: the smaller digits
split and example-free stage contexts of the structured-technique tests. ``tests/plugins/techniques/
channel_prune`` goes on ``sys.path`` for the small models of ``channel_prune_models`` (the 3-output CNN)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slimkit.core import DataSplits

sys.path.insert(0, str(Path(__file__).parents[1] / "channel_prune"))


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    """The 8x8 digits (bundled digits_cnn input), training split cut to 256 samples."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8, limit=256)


@pytest.fixture
def ctx_example() -> bool:
    """``make_ctx`` gives the context no example."""
    return False
