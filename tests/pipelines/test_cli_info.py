"""``slimkit --help`` and ``slimkit plugins``: what they list, and that help stays light."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

GROUPS = ("pipeline", "model", "data", "technique", "target", "tracking")
HEAVY = ("torch", "onnxruntime", "mlflow", "onnx", "onnxscript", "sklearn", "matplotlib")
BUILTIN_PLUGINS = {
    "torch": {"register_adapters"},
    "digits": {"register_data"},
    "magnitude_prune": {"register_techniques"},
    "finetune": {"register_techniques"},
    "cpu": {"register_targets"},
    "mlflow": {"register_trackers"},
    "terminal": {"run_start", "stage_end", "run_end", "run_failed", "progress"},
}


def _group_options(help_text: str) -> dict[str, str]:
    """{group: the text from its ``group:`` line up to the next group} in the config-groups section."""
    section = help_text.split("Config groups", 1)[1].split("Composed config", 1)[0]
    out: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        m = re.match(r"^([a-z_/]+):(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2)
        elif current is not None:
            out[current] += "\n" + line
    return out


def test_help_lists_config_groups_and_options(run_cli, show, tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert "slimkit" in proc.stdout
    groups = _group_options(proc.stdout)
    for group in GROUPS:
        assert group in groups, f"config group {group!r} missing from --help\n{proc.stdout}"
    options = {g: set(re.findall(r"[A-Za-z0-9_]+", text)) for g, text in groups.items()}
    assert {"default", "prune", "finetune", "none"} <= options["pipeline"]
    assert {"digits_cnn", "digits_resnet", "torch"} <= options["model"]
    assert "digits" in options["data"]
    assert {"magnitude_prune", "finetune"} <= options["technique"]
    assert "cpu" in options["target"]
    assert {"mlflow", "none"} <= options["tracking"]
    # The composed config is shown, with the technique defaults a user can override.
    assert "ratio:" in proc.stdout  # channel_prune, the default pipeline's first stage
    assert not (tmp_path / "outputs").exists(), "--help must not start a run"


def test_help_imports_no_heavy_framework(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from slimkit.pipelines.cli import main\n"
        "try:\n"
        "    rc = main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))\n"
        "print('RESULT ' + json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["rc"] in (0, None)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"


def _plugin_rows(table: str) -> dict[str, dict[str, str]]:
    """Parse rich's box table: {plugin name: {column: cell text, lines joined by newlines}}."""
    header: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in table.splitlines():
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│") and header:
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:
                current = rows.setdefault(cells[0].split()[0], dict.fromkeys(header, ""))
            assert current is not None, table
            for col, cell in zip(header, cells, strict=True):
                current[col] = f"{current[col]}\n{cell}".strip() if cell else current[col]
    return rows


def test_plugins_lists_builtin_plugins_with_hooks(run_cli, show, tmp_path: Path) -> None:
    proc = run_cli(["plugins"], tmp_path)
    assert proc.returncode == 0, show(proc)
    rows = _plugin_rows(proc.stdout)
    assert set(BUILTIN_PLUGINS) <= set(rows), f"plugins missing from\n{proc.stdout}"
    for name, hooks in BUILTIN_PLUGINS.items():
        listed = set(rows[name]["hooks"].split())
        assert hooks <= listed, f"{name}: hooks {sorted(hooks - listed)} not listed\n{proc.stdout}"
        assert rows[name]["module"].startswith("slimkit.plugins."), rows[name]
        assert rows[name]["version"], rows[name]
    assert "technique magnitude_prune" in rows["magnitude_prune"]["provides"]
    assert "tracker mlflow" in rows["mlflow"]["provides"]
    assert "target cpu" in rows["cpu"]["provides"]


def test_version(run_cli, tmp_path: Path) -> None:
    from slimkit import __version__

    proc = run_cli(["--version"], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"slimkit {__version__}"


# -- --help descriptions (issue 22) ----------------------------------------------------------------


def _descriptions(help_text: str) -> dict[str, dict[str, str]]:
    """{group: {option: its description}} from the config-groups section of ``--help``."""
    out: dict[str, dict[str, str]] = {}
    for group, text in _group_options(help_text).items():
        rows = (re.match(r"^  (\S+)\s+(.*)$", line) for line in text.splitlines())
        out[group] = {m.group(1): m.group(2) for m in rows if m}
    return out


def test_help_shows_whole_first_sentences(run_cli, show, tmp_path: Path) -> None:
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0, show(proc)
    descriptions = _descriptions(proc.stdout)
    # These were cut at the end of the comment's first line ("...then distillation (T=1,").
    structured = descriptions["pipeline"]["structured"]
    assert structured.endswith(
        "(T=1, alpha=0.5, feature hints at the end of each spatial stage: the techniques' defaults)."
    )
    assert descriptions["pipeline"]["compact"] == "Compact: a much smaller model, for when latency matters most."
    assert descriptions["model"]["torch"].endswith("(a state_dict, loaded with weights_only=True).")
    for group, options in descriptions.items():
        for option, text in options.items():
            if text.endswith("(plugin)") or not text:  # a third-party plugin's own description, or none
                continue
            assert text.endswith((".", "!", "?")), f"{group}={option}: cut mid-sentence: {text!r}"
            assert text.count("(") == text.count(")"), f"{group}={option}: {text!r}"


_HELP_IN_PROCESS = (
    "import contextlib, io, json, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import extra_module  # stands for a plugin: its file is part of the cache key\n"
    "from slimkit.pipelines.cli import main\n"
    "out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out):\n"
    "    rc = main(['--help'])\n"
    "print('RESULT ' + json.dumps({'rc': rc, 'hydra': 'hydra' in sys.modules, 'text': out.getvalue()}))\n"
)


def _help_in_process(tmp_path: Path, cache: Path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", _HELP_IN_PROCESS, str(tmp_path / "mods")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))


def test_help_is_cached_until_a_file_changes(tmp_path: Path) -> None:
    """The second ``--help`` prints the same text without importing Hydra (issue 22: under 1 s);
    a changed module, a damaged cache file or an unwritable cache recomputes it."""
    (tmp_path / "mods").mkdir()
    module = tmp_path / "mods" / "extra_module.py"
    module.write_text("X = 1\n")
    cache = tmp_path / "cache"
    first = _help_in_process(tmp_path, cache)
    assert first["rc"] == 0 and first["hydra"] and "== Composed config" in first["text"]
    (cached,) = (cache / "slimkit" / "help").iterdir()
    second = _help_in_process(tmp_path, cache)
    assert second == {**first, "hydra": False}
    module.write_text("X = 2  # edited\n")  # another size: the key changes whatever the clock
    third = _help_in_process(tmp_path, cache)
    assert third == first, "an edited module recomputes the help"
    assert _help_in_process(tmp_path, cache)["hydra"] is False
    cached.write_text("not a key\npartial")
    assert _help_in_process(tmp_path, cache) == first, "a damaged cache file is recomputed"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    assert _help_in_process(tmp_path, blocked) == first, "no writable cache: the help is still printed"


# -- inspect: weights of float and quantized models, a plain path (issue 22) ------------------------


def _tiny_cnn(path: Path) -> Path:
    """A CNN with 3 Conv and 2 Gemm layers (1x8x8 input, 10 classes), random weights, opset 17."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

    inits = [init("c1.w", 8, 1, 3, 3), init("c1.b", 8), init("c2.w", 16, 8, 3, 3), init("c2.b", 16)]
    inits += [init("c3.w", 16, 16, 3, 3), init("c3.b", 16), init("fc1.w", 32, 16), init("fc1.b", 32)]
    inits += [init("fc2.w", 10, 32), init("fc2.b", 10)]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h1"], name="conv1", **pads),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["h2"], name="conv2", **pads),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("Conv", ["r2", "c3.w", "c3.b"], ["h3"], name="conv3", **pads),
        helper.make_node("Relu", ["h3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["f1"], name="fc1", transB=1),
        helper.make_node("Relu", ["f1"], ["rf1"]),
        helper.make_node("Gemm", ["rf1", "fc2.w", "fc2.b"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_mlp(path: Path) -> Path:
    """Two MatMul + Add layers (16 -> 32 -> 10): MatMul weights, as transformers export them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 10)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _quantize(src: Path, dst: Path, how: str) -> Path:
    """``src`` quantized by ONNX Runtime: ``qdq`` (static, per-channel QDQ), ``qoperator`` (QLinearConv,
    QGemm...) or ``dynamic`` (ConvInteger / MatMulInteger)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    if how == "dynamic":
        quantize_dynamic(str(src), str(dst))
        return dst
    model = onnx.load(str(src))
    name = model.graph.input[0].name
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{name: rng.random(shape).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    fmt = QuantFormat.QDQ if how == "qdq" else QuantFormat.QOperator
    quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=how == "qdq")
    return dst


def test_inspect_counts_the_weights_of_a_float_cnn(tmp_path: Path) -> None:
    from slimkit.plugins.onnx.inspect import inspect_model

    info = inspect_model(_tiny_cnn(tmp_path / "cnn.onnx"))
    assert info["ops"]["Conv"] == 3 and info["ops"]["Gemm"] == 2
    assert info["weights"] == 5 and info["quantized_weights"] == 0
    assert info["params"] == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 16 * 16 * 9 + 16 + 32 * 16 + 32 + 10 * 32 + 10


def test_inspect_counts_quantized_weights(tmp_path: Path) -> None:
    """QDQ models (each weight an int8 initializer behind a DequantizeLinear), QOperator and dynamic
    models count every Conv/Gemm/MatMul weight, as the float model does (they read 0 and 1)."""
    from slimkit.plugins.onnx.inspect import inspect_model

    cnn = _tiny_cnn(tmp_path / "cnn.onnx")
    mlp = _tiny_mlp(tmp_path / "mlp.onnx")
    float_params = {cnn: inspect_model(cnn)["params"], mlp: inspect_model(mlp)["params"]}
    for src, expected in ((cnn, 5), (mlp, 2)):
        for how in ("qdq", "qoperator", "dynamic"):
            info = inspect_model(_quantize(src, tmp_path / f"{src.stem}_{how}.onnx", how))
            if how == "qdq":
                assert info["ops"].get("DequantizeLinear", 0) >= expected, info["ops"]
            assert (info["weights"], info["quantized_weights"]) == (expected, expected), (src.name, how, info["ops"])
            if how == "qdq":  # the int8 weights and int32 biases behind DequantizeLinear: as many parameters
                assert info["params"] == float_params[src], (src.name, how)


def test_inspect_takes_a_plain_path(tmp_path: Path, capsys) -> None:
    """``slimkit inspect FILE.onnx``: no ``model=onnx model.path=``, and a name Hydra's grammar would
    refuse (a space, a comma, an equals sign) is read as it is."""
    from slimkit.pipelines.cli import main

    folder = tmp_path / "my models, v2"
    folder.mkdir()
    path = _quantize(_tiny_cnn(tmp_path / "cnn.onnx"), folder / "cnn int8=qdq.onnx", "qdq")
    assert main(["inspect", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich may wrap the long line
    assert "in 5 Conv/Gemm/MatMul weights (5 quantized)" in out, out
    assert "DequantizeLinear" in out
    assert main(["inspect", "model=onnx", f"model.path={tmp_path / 'cnn.onnx'}"]) == 0  # the long form still works
    assert "in 5 Conv/Gemm/MatMul weights and" in " ".join(capsys.readouterr().out.split())


def test_inspect_plain_path_errors_are_one_line(tmp_path: Path, capsys) -> None:
    from slimkit.pipelines.cli import main

    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimkit: error: ") and "missing.onnx" in err and "does not exist" in err and "\n" not in err
    assert main(["inspect", "a.onnx", "b.onnx"]) == 2
    assert "reads one model file" in capsys.readouterr().err
    assert main(["inspect"]) == 2
    assert "slimkit inspect FILE.onnx" in capsys.readouterr().err
