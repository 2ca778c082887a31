"""``data=random`` follows what the run's model tells of its inputs (``ModelAdapter.input_specs``), and
its mappings (``data.shapes``, ``data.dims``, ``data.ranges``) take the documented command-line forms."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataError
from slimkit.core.data import InputSpec
from slimkit.pipelines.testing import FAST_TARGET, IN_PROCESS_TIMING, run_cli
from slimkit.plugins.data import random

#: A short benchmark on the CPU target, timed in the run's process in one round.
TARGET = [*(o for o in FAST_TARGET if o.startswith("target.")), *IN_PROCESS_TIMING]

TOKENS = [
    InputSpec("input_ids", "int64", ("sequence",), 0, 30522, {"sequence": 128}),
    InputSpec("attention_mask", "int64", ("sequence",), 1, 2, {"sequence": 128}),
]


def test_token_inputs_are_int64_ids_in_the_vocabulary_and_an_all_ones_mask() -> None:
    data = random.load({"samples": 20}, seed=0, model_inputs=TOKENS)
    ids, mask = data.train.inputs["input_ids"][:], data.train.inputs["attention_mask"][:]
    assert ids.dtype == np.int64 and ids.shape[1:] == (128,)
    assert ids.min() >= 0 and ids.max() < 30522 and ids.max() > 100  # the vocabulary, not [0, 100)
    assert mask.dtype == np.int64 and (mask == 1).all()
    # data.dims sizes the named dim; data.ranges overrides the model's range.
    short = random.load(
        {"samples": 10, "dims": {"sequence": 16}, "ranges": {"attention_mask": [0, 2]}}, seed=0, model_inputs=TOKENS
    )
    assert short.test.inputs["input_ids"].shape[1:] == (16,)
    masks = np.concatenate([short.train.inputs["attention_mask"][:], short.val.inputs["attention_mask"][:]])
    assert set(np.unique(masks).tolist()) == {0, 1}


def test_model_inputs_win_over_a_data_path_and_shapes_fill_what_the_model_does_not_tell(tmp_path: Path) -> None:
    conv = [InputSpec("x", "float32", (3, None, None))]
    with pytest.raises(DataError, match=r"unnamed dynamic dim at axis 2; give .* data.shapes=\{x: \[...\]\}"):
        random.load({"samples": 10}, seed=0, model_inputs=conv)
    data = random.load({"samples": 10, "shapes": {"x": [3, 7, 9]}}, seed=0, model_inputs=conv)
    assert data.test.inputs["x"].shape[1:] == (3, 7, 9) and data.test.inputs["x"].dtype == np.float32
    # One input: a shape under another name (data.shapes={input: ...}, the docs' example) feeds it.
    renamed = random.load({"samples": 10, "shapes": {"input": [3, 4, 4]}, "path": "m.pt"}, seed=0, model_inputs=conv)
    assert renamed.input_names == ["x"] and renamed.test.inputs["x"].shape[1:] == (3, 4, 4)
    unknown = [InputSpec("features", "float32", None)]
    with pytest.raises(DataError, match=r"does not tell the shape of its input 'features'.*data.shapes=\{features"):
        random.load({"samples": 10}, seed=0, model_inputs=unknown)
    with pytest.raises(DataError, match=r"data.shapes names \['other'\], which are not inputs of the model"):
        random.load({"samples": 10, "shapes": {"other": [3]}}, seed=0, model_inputs=TOKENS)
    ids = [InputSpec("ids", "int64", (5,))]  # the model does not tell the range: data.int_range, else [0, 100)
    assert random.load({"samples": 10}, seed=0, model_inputs=ids).train.inputs["ids"].max() < 100
    wide = random.load({"samples": 10, "int_range": [1000, 1010]}, seed=0, model_inputs=ids)
    assert 1000 <= wide.train.inputs["ids"].min() and wide.train.inputs["ids"].max() < 1010
    with pytest.raises(DataError, match="ranges.ids=\\[3, 3\\] must be \\[low, high\\)"):
        random.load({"samples": 10, "ranges": {"ids": [3, 3]}}, seed=0, model_inputs=ids)


# -- the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.shapes={x: [3,736,736]}"], {"shapes": {"x": [3, 736, 736]}}),
        (["data.shapes.x=[3,736,736]"], {"shapes": {"x": [3, 736, 736]}}),
        (["+data.shapes.x=[3,736,736]"], {"shapes": {"x": [3, 736, 736]}}),
        (["data.shapes={x: [1,8,8]}", "data.shapes.y=[4]"], {"shapes": {"x": [1, 8, 8], "y": [4]}}),
        (["data.dims={sequence: 64}", "data.dims.batch=1"], {"dims": {"sequence": 64, "batch": 1}}),
        (["data.ranges={mask: [0, 2]}", "data.ranges.ids=[0,9]"], {"ranges": {"mask": [0, 2], "ids": [0, 9]}}),
    ],
)
def test_documented_mapping_overrides_compose(overrides: list[str], expected: dict) -> None:
    from slimkit.pipelines.config import compose, to_plain

    data = to_plain(compose(["data=random", *overrides]))["data"]
    for key, value in expected.items():
        assert data[key] == value


def test_mapping_overrides_keep_their_types_and_other_keys_stay_closed(tmp_path: Path) -> None:
    from slimkit.core import ConfigError
    from slimkit.pipelines.config import compose

    with pytest.raises(ConfigError, match="data.shapes.x=abc"):
        compose(["data=random", "data.shapes.x=abc"])
    with pytest.raises(ConfigError, match="unknown config key 'data.nope'"):
        compose(["data=random", "data.nope.x=1"])


FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Branchy(nn.Module):
        '''A CNN with data-dependent control flow: torch.export cannot capture it, TorchScript traces it.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            if h.sum() > -1e9:
                h = torch.relu(h)
            return self.fc(h)

    def branchy():
        torch.manual_seed(0)
        return Branchy()
    """
)


def test_cli_random_data_with_documented_shapes_and_the_exporter_in_the_report(tmp_path: Path) -> None:
    """data.shapes={x: [...]} on the command line for a torch model that only torch.export's fallback
    exports; report.json says which exporter made each ONNX file."""
    (tmp_path / "slimkit_test_branchy.py").write_text(FACTORIES)
    proc = run_cli(
        [
            "model=torch",
            "model.factory=slimkit_test_branchy:branchy",
            "data=random",
            "data.samples=12",
            "data.shapes={x: [3,16,16]}",
            "pipeline=none",
            "tracking=none",
            "ui.progress=false",
            *TARGET,
        ],
        tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report_path,) = list(tmp_path.glob("outputs/*/*/report.json"))
    report = json.loads(report_path.read_text())
    assert report["config"]["data"]["shapes"] == {"x": [3, 16, 16]}
    export = report["export"]
    assert set(export) == {"baseline/model.onnx", "model.onnx"}
    for how in export.values():
        assert how["exporter"] == "torchscript" and how["fallback_reason"]
    assert report["fidelity"]["max_abs_diff"] == 0.0
    log = (report_path.parent / "run.log").read_text()
    assert "ONNX export of baseline/model.onnx: exporter=torchscript" in log
