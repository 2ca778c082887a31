"""Fixtures of the ``layer_prune`` tests beyond tests/plugins/techniques/conftest.py: the smaller digits
split and example-free stage contexts of the structured-technique tests."""

from __future__ import annotations

import pytest

from slimkit.core import DataSplits


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    """The 8x8 digits (bundled digits_cnn input), training split cut to 256 samples."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8, limit=256)


@pytest.fixture
def ctx_example() -> bool:
    """``make_ctx`` gives the context no example."""
    return False
