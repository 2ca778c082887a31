"""Fixtures of the ONNX plugin tests: the digits data. The exported ONNX files (``cnn_onnx``, ``mlp_onnx``)
are in ``tests/plugins/conftest.py``, shared with the ONNX-side tests of the techniques; helpers live in
``onnx_testlib``.
"""

from __future__ import annotations

import pytest

from slimkit.core import DataSplits


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)
