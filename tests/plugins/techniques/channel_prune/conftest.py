"""Fixtures of the ``channel_prune`` tests beyond tests/plugins/techniques/conftest.py: the smaller digits
split and example-free stage contexts of the structured-technique tests. This folder goes on ``sys.path``
for the model factories of ``channel_prune_models``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slimkit.core import DataSplits

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    """The 8x8 digits (bundled digits_cnn input), training split cut to 256 samples."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8, limit=256)


@pytest.fixture
def ctx_example() -> bool:
    """``make_ctx`` gives the context no example."""
    return False
