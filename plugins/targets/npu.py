"""The ``npu`` target: a Qualcomm Hexagon NPU (QNN HTP backend) through ``onnxruntime-qnn``.

``onnxruntime-qnn`` ships the QNN execution provider as a plugin library for ONNX Runtime, and the
HTP backend library (``libQnnHtp.so``); on Linux x86_64 the backend *emulates* the HTP, so a model
that runs here runs the same graph, with the same fixed-point arithmetic, as on the phone, only much
slower. Emulated latency says nothing about the phone: the report carries ``emulated: true`` and the
benchmarks show offload and accuracy, not speed.

How a session is made (the old ``providers=["QNNExecutionProvider"]`` form silently runs everything on
the CPU with a plugin-EP build, so it is never used):

1. ``ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())``
   once per process;
2. ``SessionOptions.add_provider_for_devices`` with the QNN device from ``ort.get_ep_devices()`` and
   ``backend_path=onnxruntime_qnn.get_qnn_htp_path()``, ``htp_arch``, and
   ``offload_graph_io_quantization=0`` (by default the EP leaves the graph's input quantization and
   output dequantization to the CPU);
3. session config ``session.disable_cpu_ep_fallback=1``: the session fails unless *every* node runs on
   the HTP; then a second session with fallback allowed and
   ``session.record_ep_graph_assignment_info=1`` lists the nodes that could not
   (``InferenceSession.get_provider_graph_assignment_info``), for a one-line error.

What the model must be (:meth:`NpuTarget.prepare`): static shapes (the batch dimension is fixed to
each of ``batch_sizes``; any other dynamic dimension needs ``target.input_shapes``), and either QDQ
(preferred: uint8 or uint16 activations, int8 weights, as :func:`slimkit.core.quant_preferences`
says) or float (the HTP runs float graphs in fp16 on the phone; the emulator may compute them in
fp32). Weight-only (``MatMulNBits``, e.g. int4) and dynamic quantization have no HTP kernels and are
refused with one line.

Config (the ``target`` group, :class:`NpuConfig`): ``htp_arch`` (HTP generation emulated/targeted,
default 73), ``soc_model`` (0: QNN's default), ``batch_sizes`` (default ``[1]``), ``runtimes``
(``[onnxruntime]`` only), ``warmup``/``repeats``/``min_seconds``/``max_seconds`` as for ``cpu``,
``threads`` (CPU threads of the session),
``isolate`` (benchmark in a worker process), ``input_shapes`` (``{input: [1, 128]}``; on the
command line ``+target.input_shapes.input=[1,128]``),
``allow_fallback`` (run unsupported nodes on the CPU instead of failing; the report counts them),
``context_binary`` (also write an EPContext model: the compiled QNN context embedded in ONNX, which
loads without recompiling) and ``validation_samples`` (test samples validated on the emulator, 0: all).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import (
    BenchmarkRequest,
    Capabilities,
    ConfigError,
    Latency,
    Placement,
    Target,
    TargetError,
    check_bool,
    check_list,
    hookimpl,
)
from slimkit.core.target import Bind
from slimkit.plugins.onnx.runtime import RECORD_PLACEMENT, _first_line, binder, ort_placement, run_batched
from slimkit.plugins.onnx.timing import latency, measure_session

from .cpu import Progress, TimingConfig

if TYPE_CHECKING:
    import onnx
    import onnxruntime

EP_NAME = "QNNExecutionProvider"
#: Session config entry that makes a session fail unless every node runs on a non-CPU provider.
DISABLE_FALLBACK = {"session.disable_cpu_ep_fallback": "1"}
_FALLBACK_MESSAGE = "assigned to the default CPU EP"

#: Ops of weight-only and dynamic quantization: no HTP kernels.
_WEIGHT_ONLY = {"MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}
_DYNAMIC = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
_ELEM = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 21: "uint4", 22: "int4", 1: "float", 10: "float16"}


# -- the QNN execution provider --------------------------------------------------------------------------


def qnn_devices() -> list[Any]:
    """The QNN HTP devices of ONNX Runtime, registering the QNN plugin library first if needed.

    Raises :class:`TargetError` when ``onnxruntime-qnn`` is not installed or offers no device.
    """
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError as exc:
        raise TargetError(
            f"target=npu needs onnxruntime-qnn ({exc}); pip install onnxruntime-qnn==2.7.0 "
            "(Linux x86_64 emulates the HTP; Windows on Snapdragon runs it)"
        ) from exc
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        try:
            ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        except Exception as exc:
            raise TargetError(
                f"ONNX Runtime cannot load the QNN execution provider ({_first_line(exc)}); reinstall "
                "onnxruntime-qnn==2.7.0 beside a matching onnxruntime"
            ) from exc
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise TargetError("the QNN execution provider offers no device; use target=cpu on this machine")
    return devices


def emulated() -> bool:
    """True where the HTP backend emulates the NPU (x86_64 hosts)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def qnn_session(
    path: str | Path,
    *,
    htp_arch: int = 73,
    soc_model: int = 0,
    threads: int = 0,
    allow_fallback: bool = False,
    config: Mapping[str, str] | None = None,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session running ``path`` on the QNN HTP backend.

    Unless ``allow_fallback``, the session is created with :data:`DISABLE_FALLBACK`: every node runs
    on the HTP or this raises a one-line :class:`TargetError` listing the nodes that cannot (found
    with a second session that may fall back). ``config`` adds session config entries.
    """
    import onnxruntime as ort
    import onnxruntime_qnn

    devices = qnn_devices()
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"ONNX file {str(path)!r} does not exist; export the model first")

    def make(fallback: bool, extra: Mapping[str, str]) -> onnxruntime.InferenceSession:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        entries = {**(config or {}), **extra, **({} if fallback else DISABLE_FALLBACK)}
        for key, value in entries.items():
            opts.add_session_config_entry(key, str(value))
        provider = {
            "backend_path": onnxruntime_qnn.get_qnn_htp_path(),
            "offload_graph_io_quantization": "0",
        }
        if htp_arch:
            provider["htp_arch"] = str(htp_arch)
        if soc_model:
            provider["soc_model"] = str(soc_model)
        opts.add_provider_for_devices(devices, provider)
        return ort.InferenceSession(str(path), sess_options=opts)

    try:
        return make(allow_fallback, {})
    except Exception as exc:
        message = str(exc)
        if _FALLBACK_MESSAGE not in message:
            raise TargetError(
                f"QNN HTP cannot compile {str(path)!r}: {_first_line(exc)}; check the model's ops and QDQ "
                "format (uint8/uint16 activations, int8 weights), or set target.allow_fallback=true"
            ) from exc
        probe = make(True, RECORD_PLACEMENT)
        placement = ort_placement(probe, EP_NAME)
        listed = ", ".join(placement.fallback[:8]) + (
            f" and {len(placement.fallback) - 8} more" if len(placement.fallback) > 8 else ""
        )
        raise TargetError(
            f"{len(placement.fallback)} of {placement.nodes_total} nodes cannot run on the QNN HTP: {listed}; "
            "replace those ops (or keep them out of the model), or set target.allow_fallback=true to run "
            "them on the CPU"
        ) from exc


def worker_session(path: str, spec: Mapping[str, Any]) -> onnxruntime.InferenceSession:
    """Session factory of the isolated benchmark worker: :func:`qnn_session` from ``spec``."""
    return qnn_session(
        path,
        htp_arch=int(spec.get("htp_arch", 73)),
        soc_model=int(spec.get("soc_model", 0)),
        threads=int(spec.get("threads", 0)),
        allow_fallback=bool(spec.get("allow_fallback", False)),
    )


# -- what the model must be ------------------------------------------------------------------------------


def quant_format(model: onnx.ModelProto) -> dict[str, Any]:
    """The quantization of ``model``: ``{qdq, activation_types, weight_types, weight_only, dynamic}``.

    Activation types are the output types of ``QuantizeLinear`` nodes; weight types those of
    initializers feeding ``DequantizeLinear`` (int32 biases left out). ``weight_only`` and
    ``dynamic`` list ``"OpType name"`` of weight-only (``MatMulNBits``...) and dynamic-quantization
    nodes.
    """
    inits = {i.name: i.data_type for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output}
    acts: set[str] = set()
    weights: set[str] = set()
    weight_only, dynamic = [], []
    for node in model.graph.node:
        label = f"{node.op_type} {node.name!r}" if node.name else node.op_type
        if node.op_type in _WEIGHT_ONLY:
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            weight_only.append(f"{label} ({bits}-bit)")
        elif node.op_type in _DYNAMIC:
            dynamic.append(label)
        elif node.op_type == "DequantizeLinear" and node.input:
            src = node.input[0]
            if src in inits:
                weights.add(_ELEM.get(inits[src], str(inits[src])))
            elif src in consts:
                value = next((a.t for a in consts[src].attribute if a.name == "value"), None)
                if value is not None:
                    weights.add(_ELEM.get(value.data_type, str(value.data_type)))
        elif node.op_type == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 else ""
            dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            if zp in inits:
                acts.add(_ELEM.get(inits[zp], str(inits[zp])))
            elif dtype:
                acts.add(_ELEM.get(dtype, str(dtype)))
            else:
                acts.add("uint8")  # QuantizeLinear's default output type
    weights.discard("int32")
    return {
        "qdq": bool(acts or weights),
        "activation_types": sorted(acts),
        "weight_types": sorted(weights),
        "weight_only": weight_only,
        "dynamic": dynamic,
    }


def check_format(model: onnx.ModelProto) -> dict[str, Any]:
    """Raise a one-line :class:`TargetError` for quantization the HTP has no kernels for.

    Returns :func:`quant_format` of the model otherwise.
    """
    fmt = quant_format(model)
    if fmt["weight_only"]:
        nodes = ", ".join(fmt["weight_only"][:6]) + (" ..." if len(fmt["weight_only"]) > 6 else "")
        raise TargetError(
            f"target=npu cannot run weight-only quantization (int4/int8 MatMulNBits: {nodes}): the QNN HTP has no "
            "kernel for it; quantize with mode=static (QDQ, uint8 or uint16 activations, int8 weights)"
        )
    if fmt["dynamic"]:
        nodes = ", ".join(fmt["dynamic"][:6]) + (" ..." if len(fmt["dynamic"]) > 6 else "")
        raise TargetError(
            f"target=npu cannot run dynamic quantization ({nodes}): the QNN HTP needs static ranges; "
            "quantize with mode=static (QDQ, uint8 or uint16 activations, int8 weights)"
        )
    return fmt


def _dims(value_info: Any) -> list[int | str]:
    out: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def fix_static_shapes(
    model: onnx.ModelProto,
    batch: int,
    input_shapes: Mapping[str, list[int]] | None = None,
    example: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Fix every input dimension of ``model`` in place: ``input_shapes`` first, then the batch dim.

    A dynamic first dimension becomes ``batch``; any other dynamic dimension needs an entry in
    ``input_shapes``, else a one-line :class:`TargetError` names the input and the override (sized
    from ``example`` when given). Output shapes are inferred again.
    """
    from onnxruntime.tools.onnx_model_utils import (
        fix_output_shapes,
        make_dim_param_fixed,
        make_input_shape_fixed,
    )

    shapes = dict(input_shapes or {})
    initializers = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    unknown = sorted(set(shapes) - {vi.name for vi in inputs})
    if unknown:
        raise TargetError(
            f"target.input_shapes names {unknown}, which are not inputs of the model; its inputs: "
            f"{[vi.name for vi in inputs]}"
        )
    for vi in inputs:
        dims = _dims(vi)
        if vi.name in shapes:
            shape = [int(d) for d in shapes[vi.name]]
            clash = [i for i, d in enumerate(dims) if isinstance(d, int) and i < len(shape) and shape[i] != d]
            if len(shape) != len(dims) or clash:
                raise TargetError(
                    f"target.input_shapes.{vi.name}={shape} does not fit the input's shape {dims}; "
                    f"give {len(dims)} sizes that keep its fixed ones"
                )
            make_input_shape_fixed(model.graph, vi.name, shape)
            continue
        if dims and not isinstance(dims[0], int):
            if dims[0] != "?":
                make_dim_param_fixed(model.graph, str(dims[0]), batch)
            else:
                rest = dims[1:]
                if all(isinstance(d, int) for d in rest):
                    make_input_shape_fixed(model.graph, vi.name, [batch, *rest])  # type: ignore[list-item]
        elif dims and dims[0] != batch:
            raise TargetError(
                f"input {vi.name!r} of the model is fixed at batch {dims[0]}, not {batch}; "
                f"set target.batch_sizes=[{dims[0]}]"
            )
    for vi in inputs:
        dims = _dims(vi)
        dynamic = [(i, d) for i, d in enumerate(dims) if not isinstance(d, int)]
        if dynamic:
            axis, label = dynamic[0]
            sample = example.get(vi.name) if example else None
            if sample is not None and np.ndim(sample) == len(dims):
                suggest = [batch, *list(np.shape(sample))[1:]]
            else:
                suggest = [d if isinstance(d, int) else "N" for d in dims]
            fix = ",".join(str(d) for d in suggest)
            raise TargetError(
                f"input {vi.name!r} has dynamic dim {label!r} at axis {axis} (shape {dims}) and target=npu needs "
                f"static shapes; set +target.input_shapes.{vi.name}=[{fix}]"
            )
    try:
        fix_output_shapes(model)
    except Exception:  # inference may fail on contrib ops; QNN infers shapes itself
        pass
    return model


# -- the target ------------------------------------------------------------------------------------------


@dataclass
class NpuConfig(TimingConfig):
    """``target=npu``: the timing options (fewer runs: the emulator is slow) plus the QNN HTP's
    (see the module docstring). ``runtimes`` is always ``[onnxruntime]`` (the QNN execution provider):
    a setting shared with the other targets (e.g. search's ``trial_target``)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1])
    warmup: int = 2
    repeats: int = 10
    runtimes: list[str] = field(default_factory=lambda: ["onnxruntime"])
    htp_arch: int = 73
    soc_model: int = 0
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    allow_fallback: bool = False
    context_binary: bool = False
    validation_samples: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        runtimes = check_list("runtimes", self.runtimes, example="[onnxruntime]")
        if [str(r) for r in runtimes] != ["onnxruntime"]:
            raise ConfigError(f"runtimes={runtimes!r}: target=npu runs onnxruntime (QNN) only; use [onnxruntime]")
        self.runtimes = ["onnxruntime"]
        for key, example in (("htp_arch", 73), ("soc_model", 0), ("validation_samples", 128)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(f"{key}={value!r} must be an integer >= 0; use e.g. {example}")
            setattr(self, key, int(value))
        self.allow_fallback = check_bool("allow_fallback", self.allow_fallback, example="false")
        self.context_binary = check_bool("context_binary", self.context_binary, example="false")
        shapes = self.input_shapes
        if not isinstance(shapes, Mapping):
            raise ConfigError(f"input_shapes={shapes!r} must map input names to shapes; use e.g. {{input: [1, 128]}}")
        for name, shape in shapes.items():
            ok = isinstance(shape, list | tuple) and shape and all(isinstance(d, int) and d >= 1 for d in shape)
            if not ok:
                raise ConfigError(f"input_shapes.{name}={shape!r} must list sizes >= 1; use e.g. [1, 128]")
        self.input_shapes = {str(k): [int(d) for d in v] for k, v in shapes.items()}


class NpuTarget(Target):
    """Qualcomm NPU (QNN HTP) through onnxruntime-qnn; emulated on x86_64."""

    name = "npu"
    description = "Qualcomm NPU (QNN HTP) via onnxruntime-qnn: static shapes, QDQ u8/u16; emulated on x86_64"

    Config = NpuConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        #: The typed config (:class:`NpuConfig`); ``options`` is the same as a dict.
        self.config: NpuConfig
        self.options: dict[str, Any] = asdict(self.config)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes to measure (default ``[1]``): the model is fixed to each in turn."""
        return list(self.options["batch_sizes"])

    def check_available(self) -> None:
        """Raise :class:`TargetError` unless onnxruntime-qnn is installed and offers a QNN device."""
        qnn_devices()

    def capabilities(self) -> Capabilities:
        """Static QDQ (uint8/uint16 activations, int8 weights) or fp16; static shapes; no sparsity."""
        return Capabilities(
            precisions=("int8", "int16", "fp16"),
            quant_formats=("QDQ",),
            static_shapes=True,
            sparsity_formats=(),
            runtimes=("onnxruntime",),
            activation_types=("uint8", "uint16"),
            weight_types=("int8", "uint8", "int4"),
            supported_ops=None,
            preferred_quant={"per_channel": True, "weight_symmetric": True, "activation_symmetric": False},
            providers=(EP_NAME,),
            # the HTP emulator on x86_64 proves a model runs, not how fast the phone runs it
            representative_timing=not emulated(),
        )

    def _session_kwargs(self) -> dict[str, Any]:
        o = self.options
        return {
            "htp_arch": o["htp_arch"],
            "soc_model": o["soc_model"],
            "threads": o["threads"],
            "allow_fallback": o["allow_fallback"],
        }

    # -- preparing ---------------------------------------------------------------------------------------

    def _write_prepared(
        self,
        onnx_path: Path,
        out_path: Path,
        batch: int | None = None,
        example: Mapping[str, np.ndarray] | None = None,
    ) -> Path:
        """Write ``onnx_path`` with static shapes (batch ``batch``, default the first batch size) to ``out_path``.

        Refuses weight-only and dynamic quantization (:func:`check_format`) and dynamic dims it
        cannot fix (:func:`fix_static_shapes`), each with one line.
        """
        import onnx

        from slimkit.core import files

        batch = self.batch_sizes[0] if batch is None else int(batch)
        try:
            model = onnx.load(str(onnx_path))
        except Exception as exc:
            raise TargetError(
                f"cannot read ONNX file {str(onnx_path)!r}: {_first_line(exc)}; check that the file is a complete "
                "ONNX model (re-export it)"
            ) from exc
        check_format(model)
        fix_static_shapes(model, batch, self.options["input_shapes"], example)
        with files.atomic_path(Path(out_path)) as tmp:
            onnx.save(model, str(tmp))
        return Path(out_path)

    def prepare(
        self, onnx_path: Path, batch: int | None = None, example: Mapping[str, np.ndarray] | None = None
    ) -> Path:
        """Prepare ``onnx_path`` for batch ``batch`` beside it (``NAME.npu_bB.onnx``) and return that path.

        Falls back to the system's temporary directory when the model's folder is not writable.
        """
        batch = self.batch_sizes[0] if batch is None else int(batch)
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise TargetError(f"ONNX file {str(onnx_path)!r} does not exist; export the model first")
        folder = onnx_path.parent if os.access(onnx_path.parent, os.W_OK) else Path(_tempdir())
        return self._write_prepared(onnx_path, folder / f"{onnx_path.stem}.npu_b{batch}.onnx", batch, example)

    def context_binary(self, prepared: Path) -> Path:
        """Compile ``prepared`` for the HTP and write it as an EPContext model beside it (``*_ctx.onnx``).

        The EPContext model embeds the compiled QNN context: the phone loads it without compiling.
        """
        out = prepared.with_name(prepared.stem + "_ctx.onnx")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.onnx")
        tmp.unlink(missing_ok=True)
        qnn_session(
            prepared,
            **self._session_kwargs(),
            config={"ep.context_enable": "1", "ep.context_file_path": str(tmp), "ep.context_embed_mode": "1"},
        )
        if not tmp.exists():
            raise TargetError(f"QNN wrote no EPContext model for {str(prepared)!r}; set target.context_binary=false")
        os.replace(tmp, out)
        return out

    # -- running -----------------------------------------------------------------------------------------

    def benchmark(self, request: BenchmarkRequest, progress: Progress) -> list[Latency]:
        """Emulated latency on the HTP at each batch size (the model fixed to it); the framework is not run.

        On x86_64 these are emulator timings: they prove the model runs, not how fast the phone is.
        """
        if request.onnx_path is None:
            return []
        o = self.options
        timing = {k: o[k] for k in ("warmup", "repeats", "min_seconds", "max_seconds")}
        batches = [b for b in self.batch_sizes if b in request.examples]
        out = []
        for batch in batches:
            example = request.examples[batch]
            path = self.prepare(request.onnx_path, batch, example)
            task = f"qnn_htp b{batch}"
            if o["isolate"]:
                from slimkit.plugins.onnx.worker import run_isolated

                out.append(
                    run_isolated(
                        path,
                        example,
                        batch=batch,
                        runtime="qnn_htp",
                        factory="slimkit.plugins.targets.npu:worker_session",
                        session=self._session_kwargs(),
                        timing=timing,
                        threads=o["threads"] or 1,
                        progress=progress,
                        task=task,
                    )
                )
            else:
                session = qnn_session(path, **self._session_kwargs())
                times = measure_session(session, path, example, batch, timing, progress, task)
                out.append(latency("qnn_htp", batch, times, o["threads"] or 1))
        return out

    def runner(self, onnx_path: Path) -> Bind:
        """A QNN HTP session (emulated on x86_64) for :meth:`measure`; ``onnx_path`` is a prepared file."""
        return binder(qnn_session(onnx_path, **self._session_kwargs()))

    def infer(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's first output on the HTP for the first ``validation_samples`` rows (0: all)."""
        limit = self.options["validation_samples"]
        rows = {k: np.asarray(v[:limit]) if limit else np.asarray(v) for k, v in inputs.items()}
        path = self.prepare(onnx_path, None, {k: v[:1] for k, v in rows.items()})
        return run_batched(qnn_session(path, **self._session_kwargs()), rows)

    def placement(self, onnx_path: Path) -> Placement:
        """Nodes on the HTP vs the CPU (with ``allow_fallback``; otherwise any CPU node is an error)."""
        path = self.prepare(onnx_path)
        session = qnn_session(path, **self._session_kwargs(), config=RECORD_PLACEMENT)
        return ort_placement(session, EP_NAME)

    def report(
        self, onnx_path: Path, reference_outputs: np.ndarray, examples: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """:meth:`Target.report` plus ``emulated``, ``htp_arch``, ``quantization`` and the prepared files."""
        import onnx

        out = super().report(onnx_path, reference_outputs, examples)
        prepared = self.prepare(onnx_path)
        fmt = quant_format(onnx.load(str(prepared), load_external_data=False))
        out.update(
            {
                "emulated": emulated(),
                "htp_arch": self.options["htp_arch"],
                "precision": "QDQ" if fmt["qdq"] else "float",
                "activation_types": fmt["activation_types"],
                "weight_types": fmt["weight_types"],
                "prepared_model": str(prepared),
            }
        )
        if self.options["context_binary"]:
            out["context_binary"] = str(self.context_binary(prepared))
        return out


def _tempdir() -> str:
    import tempfile

    return tempfile.gettempdir()


@hookimpl
def slimkit_register_targets(registry: Any) -> None:
    """Register the ``npu`` target."""
    registry.add_target(NpuTarget)
