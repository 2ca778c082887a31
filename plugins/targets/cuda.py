"""The ``cuda`` target: an NVIDIA GPU through ONNX Runtime (CUDA EP, TensorRT EP when present) and torch.

Runtimes (``target.runtimes``):

``onnxruntime``
    ``onnxruntime-gpu``'s TensorRT execution provider when it is available and ``tensorrt`` is true
    (fp16 with ``precision=fp16``; QDQ models run in int8), else its CUDA execution provider. A
    session that ONNX Runtime silently put on the CPU is refused with one line.
``torch``
    The framework model (a ``torch.nn.Module``), copied to the GPU, in fp16 with ``precision=fp16``;
    with ``sparsity=2:4`` its Linear weights that follow the 2:4 pattern (two zeros in every group of
    four along the input dimension, what ``magnitude_prune pattern=2:4`` produces) are converted with
    ``torch.sparse.to_sparse_semi_structured`` so the sparse tensor cores run them.

Latency is timed with the device synchronised after each run; latencies carry the GPU memory held
(torch: peak allocated; ONNX Runtime: the worker process's use from ``nvidia-smi``).

Without a GPU, :meth:`CudaTarget.check_available` fails with ``target=cuda needs a CUDA device;
none found — use target=cpu``. Nothing here needs a GPU to import, and the 2:4 helpers
(:func:`is_2to4`, :func:`semi_structured_layers`) run on the CPU.

Config (:class:`CudaConfig`): as ``cpu`` (``threads``, ``batch_sizes``, ``warmup``, ``repeats``,
``min_seconds``, ``max_seconds``, ``runtimes``, ``graph_optimization``, ``isolate``) plus ``device``
(CUDA device index), ``precision`` (``fp32`` or ``fp16``), ``tensorrt`` (use the TensorRT EP when
present) and ``sparsity`` (``none`` or ``2:4``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
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
    hookimpl,
)
from slimkit.core.target import Bind
from slimkit.core.timing import time_runs
from slimkit.plugins.onnx.runtime import _ORT_LEVELS, RECORD_PLACEMENT, _first_line, binder, ort_placement, run_batched
from slimkit.plugins.onnx.timing import latency, measure_session

from .cpu import CpuConfig, Progress

if TYPE_CHECKING:
    import onnxruntime

NO_DEVICE = "target=cuda needs a CUDA device; none found — use target=cpu"
PRECISIONS = ("fp32", "fp16")
SPARSITIES = ("none", "2:4")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


# -- the device ------------------------------------------------------------------------------------------


def cuda_device_count() -> int:
    """CUDA devices visible to this process: torch's count when torch is installed, else ``nvidia-smi``'s."""
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        try:
            return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
        except Exception:
            return 0
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def ort_gpu_providers() -> list[str]:
    """The GPU execution providers this ONNX Runtime build offers (TensorRT, CUDA), in that order."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    have = set(ort.get_available_providers())
    return [p for p in GPU_PROVIDERS if p in have]


def cuda_session(
    path: str | Path,
    *,
    device: int = 0,
    tensorrt: bool = True,
    fp16: bool = False,
    int8: bool | None = None,
    threads: int = 0,
    optimization: str = "all",
    config: Mapping[str, str] | None = None,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session on CUDA device ``device`` (TensorRT EP first when ``tensorrt`` and present).

    TensorRT builds fp16 engines with ``fp16`` and int8 ones with ``int8`` (default: when the model
    has QDQ nodes, whose scales TensorRT uses; a float model would need a calibration table).

    Raises a one-line :class:`TargetError` when the build has no GPU provider or ONNX Runtime put
    the session on the CPU anyway.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise TargetError(f"ONNX file {str(path)!r} does not exist; export the model first")
    available = ort_gpu_providers()
    if "CUDAExecutionProvider" not in available:
        raise TargetError(
            "this ONNX Runtime has no CUDAExecutionProvider (the CPU package is installed); "
            "pip install onnxruntime-gpu, or set target.runtimes=[torch]"
        )
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[optimization])
    opts.log_severity_level = 3
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    providers: list[Any] = []
    if tensorrt and "TensorrtExecutionProvider" in available:
        if int8 is None:
            int8 = has_qdq(path)
        providers.append(
            ("TensorrtExecutionProvider", {"device_id": device, "trt_fp16_enable": fp16, "trt_int8_enable": int8})
        )
    providers += [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise TargetError(
            f"ONNX Runtime cannot load {str(path)!r} on CUDA device {device}: {_first_line(exc)}; "
            "check the model and the CUDA/cuDNN install (or set target.tensorrt=false)"
        ) from exc
    if not set(session.get_providers()) & set(GPU_PROVIDERS):
        raise TargetError(
            f"ONNX Runtime put {str(path)!r} on the CPU (providers {session.get_providers()}); "
            "check that CUDA and cuDNN libraries match onnxruntime-gpu, or set target.runtimes=[torch]"
        )
    return session


def has_qdq(path: str | Path) -> bool:
    """True when the ONNX model at ``path`` has QuantizeLinear/DequantizeLinear nodes (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def worker_session(path: str, spec: Mapping[str, Any]) -> onnxruntime.InferenceSession:
    """Session factory of the isolated benchmark worker: :func:`cuda_session` from ``spec``."""
    return cuda_session(
        path,
        device=int(spec.get("device", 0)),
        tensorrt=bool(spec.get("tensorrt", True)),
        fp16=bool(spec.get("fp16", False)),
        threads=int(spec.get("threads", 0)),
        optimization=str(spec.get("optimization", "all")),
    )


# -- 2:4 semi-structured sparsity ---------------------------------------------------------------------------


def is_2to4(weight: Any) -> bool:
    """True when every group of 4 consecutive weights along the last (input) dim has at least 2 zeros.

    ``weight`` is a 2-D array or tensor ``[out, in]`` with ``in`` a multiple of 4.
    """
    w = np.asarray(weight.detach().cpu().float().numpy() if hasattr(weight, "detach") else weight)
    if w.ndim != 2 or w.shape[1] % 4:
        return False
    groups = w.reshape(w.shape[0], -1, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def semi_structured_layers(model: Any) -> tuple[list[str], dict[str, str]]:
    """Linear layers of ``model`` whose weights :func:`is_2to4` (converted) and the others with why.

    Runs on the CPU: it only inspects weights. Shapes follow torch's semi-structured kernels: both
    dimensions multiples of 64 for fp16.
    """
    import torch

    ok: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        out_f, in_f = module.weight.shape
        if out_f % 64 or in_f % 64:
            skipped[name] = f"shape {out_f}x{in_f} is not a multiple of 64"
        elif not is_2to4(module.weight):
            skipped[name] = "weights do not follow the 2:4 pattern (prune with magnitude_prune pattern=2:4)"
        else:
            ok.append(name)
    return ok, skipped


def to_semi_structured(model: Any) -> tuple[list[str], dict[str, str]]:
    """Convert the 2:4 Linear weights of a CUDA fp16/bf16 ``model`` in place; (converted, skipped)."""
    import torch
    from torch.sparse import to_sparse_semi_structured

    names, skipped = semi_structured_layers(model)
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        try:
            sparse = to_sparse_semi_structured(module.weight.detach())
        except Exception as exc:
            raise TargetError(
                f"layer {name!r} cannot be made 2:4 semi-structured ({type(exc).__name__}: {_first_line(exc)}); "
                "use target.precision=fp16 on an Ampere or newer GPU, or target.sparsity=none"
            ) from exc
        module.weight = torch.nn.Parameter(sparse, requires_grad=False)
    return names, skipped


# -- the target ------------------------------------------------------------------------------------------


@dataclass
class CudaConfig(CpuConfig):
    """``target=cuda``: the ``cpu`` target's options plus ``device`` (CUDA device index),
    ``precision`` (``fp32`` or ``fp16``), ``tensorrt`` (use the TensorRT EP when present) and
    ``sparsity`` (``none`` or ``2:4``)."""

    device: int = 0
    precision: str = "fp32"
    tensorrt: bool = True
    sparsity: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.device, bool) or not isinstance(self.device, int | np.integer) or self.device < 0:
            raise ConfigError(f"device={self.device!r} must be a CUDA device index >= 0; use e.g. 0")
        self.device = int(self.device)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision={self.precision!r} is not one of {list(PRECISIONS)}; use fp16 for tensor cores "
                "(int8 comes from a QDQ model: quantize it first)"
            )
        if self.sparsity not in SPARSITIES:
            raise ConfigError(f"sparsity={self.sparsity!r} is not one of {list(SPARSITIES)}; use e.g. 2:4")
        self.tensorrt = check_bool("tensorrt", self.tensorrt)


class CudaTarget(Target):
    """An NVIDIA GPU: ONNX Runtime CUDA/TensorRT EP and torch CUDA (fp16, int8, 2:4 sparsity)."""

    name = "cuda"
    description = "NVIDIA GPU: ONNX Runtime CUDA EP (TensorRT EP when present) and torch CUDA; fp16, int8, 2:4"

    Config = CudaConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        #: The typed config (:class:`CudaConfig`); ``options`` is the same as a dict.
        self.config: CudaConfig
        self.options: dict[str, Any] = asdict(self.config)

    @property
    def batch_sizes(self) -> list[int]:
        return list(self.options["batch_sizes"])

    def check_available(self) -> None:
        """Raise :class:`TargetError` without a CUDA device, or when a configured runtime lacks GPU support."""
        count = cuda_device_count()
        if count == 0:
            raise TargetError(NO_DEVICE)
        if self.options["device"] >= count:
            raise TargetError(
                f"target.device={self.options['device']} but {count} CUDA device(s) are visible; "
                f"use target.device=0..{count - 1}"
            )
        if "onnxruntime" in self.options["runtimes"] and "CUDAExecutionProvider" not in ort_gpu_providers():
            raise TargetError(
                "this ONNX Runtime has no CUDAExecutionProvider (the CPU package is installed); "
                "pip install onnxruntime-gpu, or set target.runtimes=[torch]"
            )

    def capabilities(self) -> Capabilities:
        """fp32/fp16 and int8 QDQ (symmetric, for TensorRT); 2:4 semi-structured sparsity."""
        return Capabilities(
            precisions=("fp32", "fp16", "int8"),
            quant_formats=("QDQ",),
            static_shapes=False,
            sparsity_formats=("2:4",),
            runtimes=("onnxruntime", "torch"),
            activation_types=("int8",),
            weight_types=("int8",),
            supported_ops=None,
            preferred_quant={"activation_symmetric": True, "weight_symmetric": True, "per_channel": True},
            providers=GPU_PROVIDERS,
        )

    def _session_spec(self) -> dict[str, Any]:
        o = self.options
        return {
            "device": o["device"],
            "tensorrt": o["tensorrt"],
            "fp16": o["precision"] == "fp16",
            "threads": o["threads"],
            "optimization": o["graph_optimization"],
        }

    def prepare(
        self, onnx_path: Path, batch: int | None = None, example: Mapping[str, np.ndarray] | None = None
    ) -> Path:
        """fp16: the model converted with ONNX Runtime's float16 converter (inputs and outputs stay fp32),
        written beside it as ``NAME.cuda_fp16.onnx``; fp32: the file as is. Batch and example are not needed."""
        onnx_path = Path(onnx_path)
        if self.options["precision"] != "fp16":
            return onnx_path
        out_path = onnx_path.with_name(f"{onnx_path.stem}.cuda_{self.options['precision']}.onnx")
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from slimkit.core import files

        model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
        with files.atomic_path(Path(out_path)) as tmp:
            onnx.save(model, str(tmp))
        return Path(out_path)

    def benchmark(self, request: BenchmarkRequest, progress: Progress) -> list[Latency]:
        """Latency on the GPU at each batch size: ONNX Runtime (isolated by default), then torch."""
        o = self.options
        timing = {k: o[k] for k in ("warmup", "repeats", "min_seconds", "max_seconds")}
        batches = [b for b in self.batch_sizes if b in request.examples]
        out: list[Latency] = []
        if "onnxruntime" in o["runtimes"] and request.onnx_path is not None:
            path = self.prepare(request.onnx_path)
            if o["isolate"]:
                from slimkit.plugins.onnx.worker import run_isolated

                out += [
                    run_isolated(
                        path,
                        request.examples[b],
                        batch=b,
                        runtime="onnxruntime_cuda",
                        factory="slimkit.plugins.targets.cuda:worker_session",
                        session=self._session_spec(),
                        timing=timing,
                        threads=o["threads"] or 1,
                        progress=progress,
                        task=f"onnxruntime_cuda b{b}",
                        gpu=True,
                    )
                    for b in batches
                ]
            else:
                session = cuda_session(path, **self._session_spec())
                for b in batches:
                    times = measure_session(
                        session, path, request.examples[b], b, timing, progress, f"onnxruntime_cuda b{b}"
                    )
                    out.append(latency("onnxruntime_cuda", b, times, o["threads"] or 1))
        if "torch" in o["runtimes"] and request.framework_model is not None and request.framework_name == "torch":
            out += self._bench_torch(request.framework_model, request, batches, timing, progress)
        return out

    def _bench_torch(
        self,
        model: Any,
        request: BenchmarkRequest,
        batches: list[int],
        timing: dict[str, Any],
        progress: Progress,
    ) -> list[Latency]:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(model, torch.nn.Module):
            return []
        device = torch.device("cuda", self.options["device"])
        dtype = torch.float16 if self.options["precision"] == "fp16" else torch.float32
        gpu_model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        runtime = "torch_cuda"
        if self.options["sparsity"] == "2:4":
            converted, _ = to_semi_structured(gpu_model)
            runtime = "torch_cuda_2to4" if converted else runtime
        out = []
        for b in batches:
            tensors = [
                torch.from_numpy(np.ascontiguousarray(v)).to(device=device, dtype=dtype)
                if np.issubdtype(np.asarray(v).dtype, np.floating)
                else torch.from_numpy(np.ascontiguousarray(v)).to(device)
                for v in request.examples[b].values()
            ]

            def run(tensors: list[Any] = tensors, m: Any = gpu_model) -> Any:
                with torch.inference_mode():
                    y = m(*tensors)
                torch.cuda.synchronize(device)
                return y

            torch.cuda.reset_peak_memory_stats(device)
            try:
                times = time_runs(run, progress=progress, task=f"{runtime} b{b}", **timing)
            except Exception as exc:
                raise TargetError(
                    f"torch on CUDA failed at batch {b}: {type(exc).__name__}: {_first_line(exc)}; check that "
                    "the model runs on the GPU, or drop 'torch' from target.runtimes"
                ) from exc
            lat = latency(runtime, b, times, self.options["threads"] or 1)
            lat.gpu_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
            out.append(lat)
        del gpu_model
        torch.cuda.empty_cache()
        return out

    def runner(self, onnx_path: Path) -> Bind:
        """An ONNX Runtime session on the GPU (TensorRT/CUDA providers) for :meth:`measure`."""
        return binder(cuda_session(onnx_path, **self._session_spec()))

    def infer(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's first output on every row of ``inputs``, run by ONNX Runtime on the GPU."""
        return run_batched(cuda_session(self.prepare(onnx_path), **self._session_spec()), inputs)

    def placement(self, onnx_path: Path) -> Placement:
        """Nodes on the GPU providers (TensorRT and CUDA together) vs the CPU."""
        session = cuda_session(self.prepare(onnx_path), **self._session_spec(), config=RECORD_PLACEMENT)
        provider = session.get_providers()[0]
        placement = ort_placement(session, provider)
        if provider == "TensorrtExecutionProvider":  # nodes TensorRT left to the CUDA EP are on the GPU too
            cuda = ort_placement(session, "CUDAExecutionProvider")
            placement.nodes_on_target += cuda.nodes_on_target
            placement.fallback = [f for f in placement.fallback if f in cuda.fallback]
        return placement

    def report(
        self, onnx_path: Path, reference_outputs: np.ndarray, examples: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """:meth:`Target.report` plus the device name and precision."""
        out = super().report(onnx_path, reference_outputs, examples)
        out["precision"] = self.options["precision"]
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            out["device_name"] = torch.cuda.get_device_name(self.options["device"])
        return out


@hookimpl
def slimkit_register_targets(registry: Any) -> None:
    """Register the ``cuda`` target."""
    registry.add_target(CudaTarget)
