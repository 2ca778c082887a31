"""The PyTorch adapter: load user and bundled ``nn.Module`` models, run, measure, save, export.

Model config (``model=torch``, :class:`TorchModelConfig`)::

    factory: package.module:function   # builds the nn.Module
    kwargs: {}                         # passed to the factory
    weights: FILE                      # a state_dict, loaded with weights_only=True
    path: FILE                         # or a fully pickled model ...
    trust_pickle: false                # ... only with this set: unpickling runs code

torch is imported inside this module only; the plugin module itself is imported lazily by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import logging
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, ModelAdapter, ModelConfig, ModelError, ParamCount, Split, hookimpl
from slimkit.core.data import InputSpec

PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")

#: The sequence length random token inputs get when the data config does not say (``data.dims``).
DEFAULT_SEQUENCE = 128

log = logging.getLogger(__name__)


@dataclass
class TorchModelConfig(ModelConfig):
    """``model=torch`` and the bundled torch models (see the module docstring); ``input_size``: the
    side of the model's square input, which ``data=digits`` follows (null: the data's default)."""

    adapter: str = "torch"
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    path: str | None = None
    trust_pickle: bool = False
    input_size: int | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def unpicklable(model: Any, exc: BaseException, origin: str = "") -> ModelError:
    """The one-line ModelError for a model that ``torch.save`` cannot pickle, naming its class and the fix."""
    where = f"{origin} gives a model of class" if origin else "the model of class"
    return ModelError(
        f"{where} {type(model).__module__}.{type(model).__qualname__} that cannot be saved ({_first_line(exc)}): "
        "slimkit saves every stage's model with torch.save; define the class, and every function or lambda its "
        "modules hold, at module level (or make them picklable)"
    )


def check_picklable(model: Any, origin: str) -> None:
    """Raise :func:`unpicklable` now, before any work, when ``model`` cannot be pickled: tensors are left out
    (a persistent id each), so this pickles only the module objects, not the weights."""
    import pickle

    import torch

    class Null:
        def write(self, data: bytes) -> int:
            return len(data)

    class NoTensors(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return id(obj) if isinstance(obj, torch.Tensor | torch.UntypedStorage | torch.TypedStorage) else None

    try:
        NoTensors(Null(), protocol=2).dump(model)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # a local class, a lambda, a lock
        raise unpicklable(model, exc, origin) from None


def import_object(spec: str, option: str) -> Any:
    """Import ``package.module:attr`` (or ``package.module.attr``), with a one-line error."""
    if not spec or not isinstance(spec, str):
        raise ModelError(f"{option} is not set; give package.module:function")
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr:
        raise ModelError(f"{option}={spec!r} is not of the form package.module:function; fix the spelling")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"{option}={spec!r} cannot be imported ({_first_line(exc)}); install the package or add it to PYTHONPATH"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelError(f"{option}={spec!r}: module {module_name!r} has no attribute {attr!r}; fix the name") from None


def _intern_strings(model: Any) -> None:
    """Make every equal string in the modules' attributes one object (``sys.intern``), in place.

    A pickle refers back to a string it already wrote when it is the same object: a module loaded
    from a file and one built in memory hold the same strings as different objects, so the same
    weights would pickle to different bytes. Interned, they pickle alike (a resumed run writes the
    bytes of an uninterrupted one)."""
    import sys
    from collections import OrderedDict

    def canon(value: Any) -> Any:
        if isinstance(value, str):
            return sys.intern(value)
        if type(value) in (dict, OrderedDict):
            return type(value)((canon(k), canon(v)) for k, v in value.items())
        return value

    for module in model.modules():
        module.__dict__.update({k: canon(v) for k, v in module.__dict__.items()})
        keys = dict.fromkeys(module.__dict__)  # the keys themselves, in order
        state = dict(module.__dict__)
        module.__dict__.clear()
        module.__dict__.update({sys.intern(k): state[k] for k in keys})


class TorchAdapter(ModelAdapter):
    """Adapter for ``torch.nn.Module`` models."""

    name = "torch"
    suffixes = (".pt",)
    description = "PyTorch nn.Module (factory + state_dict, or a trusted pickle)"
    Config = TorchModelConfig

    # -- loading ----------------------------------------------------------------------------------

    def load(self, cfg: Mapping[str, Any]) -> Any:
        import torch

        config: TorchModelConfig = self.model_config(cfg)
        path = config.path
        if path:
            p = Path(path)
            if not p.is_file():
                raise ModelError(f"model.path={path} does not exist; give the path of a saved model")
            if not config.trust_pickle:
                return self._load_untrusted(p)
            try:
                model = torch.load(p, map_location="cpu", weights_only=False)
            except Exception as exc:
                raise ModelError(f"model.path={path} cannot be loaded ({_first_line(exc)}); check the file") from exc
            if not isinstance(model, torch.nn.Module):
                raise ModelError(
                    f"model.path={path} holds a {type(model).__name__}, not an nn.Module; for a state_dict use "
                    "model.factory + model.weights"
                )
            return model.eval()
        factory = import_object(config.factory or "", "model.factory")
        kwargs = dict(config.kwargs)
        try:
            model = factory(**kwargs)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"model.factory={config.factory!r} failed with kwargs {kwargs}: {_first_line(exc)}; check model.kwargs"
            ) from exc
        if not isinstance(model, torch.nn.Module):
            raise ModelError(
                f"model.factory={config.factory!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                "point it at a function that builds the model"
            )
        check_picklable(model, f"model.factory={config.factory!r}")
        if config.weights:
            self._load_weights(model, Path(config.weights), config.trust_pickle)
        return model.eval()

    @staticmethod
    def _load_untrusted(path: Path) -> Any:
        """A whole-module file without ``trust_pickle``: loaded only if torch's restricted unpickler
        can (modules, configs and activations: what slimkit's own ``model.pt`` files hold)."""
        from .safe_load import UnsafeModuleFile, load_module

        try:
            return load_module(path)
        except UnsafeModuleFile as exc:
            raise ModelError(
                f"model.path={path} is a pickled model naming {exc}, and unpickling that runs arbitrary code; "
                "pass model.trust_pickle=true if you trust the file, or use model.factory + model.weights"
            ) from None
        except Exception as exc:
            raise ModelError(f"model.path={path} cannot be loaded ({_first_line(exc)}); check the file") from exc

    @staticmethod
    def _load_weights(model: Any, path: Path, trust_pickle: bool) -> None:
        import pickle

        import torch

        if not path.is_file():
            raise ModelError(f"model.weights={path} does not exist; give the path of a saved state_dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if not trust_pickle:
                raise ModelError(
                    f"model.weights={path} holds pickled objects, not just tensors, and unpickling runs code; "
                    "save model.state_dict() instead, or pass model.trust_pickle=true if you trust the file"
                ) from exc
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(
                f"model.weights={path} cannot be read ({_first_line(exc)}); is it a torch.save file?"
            ) from exc
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ModelError(
                f"model.weights={path} holds a {type(state).__name__}, not a state_dict; save model.state_dict()"
            )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            msg = str(exc)
            details = []
            for line in msg.splitlines()[1:]:
                line = line.strip()
                if line:
                    details.append(line.rstrip("."))
            detail = "; ".join(details)[:400] or msg.splitlines()[0]
            raise ModelError(
                f"model.weights={path} does not fit the model from model.factory ({detail}); use the weights "
                "saved from this architecture or fix model.kwargs"
            ) from exc

    def load_file(self, path: Path) -> Any:
        """The module in a file :meth:`save` wrote, loaded with torch's restricted unpickler
        (:mod:`.safe_load`): a file naming anything but modules, configs and activations raises
        :class:`ModelError` instead of running it."""
        from .safe_load import UnsafeModuleFile, load_module

        try:
            return load_module(Path(path))
        except UnsafeModuleFile as exc:
            raise ModelError(f"{path} names {exc}, which loading it would have to trust") from None

    def save(self, model: Any, path: Path) -> None:
        import pickle

        import torch

        _intern_strings(model)
        try:
            torch.save(model, path)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise unpicklable(model, exc) from None

    # -- running ----------------------------------------------------------------------------------

    def seed(self, seed: int) -> None:
        import random

        import torch

        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
        # No torch.use_deterministic_algorithms: it imports torch._inductor (seconds), and the CPU
        # kernels slimkit trains with are deterministic; tests/pipelines/test_determinism.py checks it.

    def _args(self, inputs: Mapping[str, np.ndarray]) -> tuple[list[Any], dict[str, Any]]:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        if len(tensors) == 1:
            return list(tensors.values()), {}
        return [], tensors

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        from .train import logits_of

        args, kwargs = self._args(inputs)
        model.eval()
        with torch.inference_mode():
            out = logits_of(model(*args, **kwargs))
        return out.float().numpy()

    def predict_outputs(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every tensor the model returns, flattened in the order the ONNX export lists them (a
        multi-output model's fidelity is judged per output against its export)."""
        import torch
        from torch.utils._pytree import tree_leaves

        args, kwargs = self._args(inputs)
        model.eval()
        with torch.inference_mode():
            out = model(*args, **kwargs)
        tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return [t.float().numpy() if t.is_floating_point() else t.numpy() for t in tensors]

    # -- measuring --------------------------------------------------------------------------------

    def count_params(self, model: Any) -> ParamCount:
        total = nonzero = 0
        for p in model.parameters():
            total += p.numel()
            nonzero += int((p.detach() != 0).sum())
        return ParamCount(total=total, nonzero=nonzero)

    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        args, kwargs = self._args(example)
        model.eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
        return int(counter.get_total_flops() // 2)

    def layer_sparsity(self, model: Any) -> dict[str, float]:
        out = {}
        for name, module in model.named_modules():
            if type(module).__name__ in PRUNABLE and getattr(module, "weight", None) is not None:
                w = module.weight.detach()
                out[name] = float((w == 0).sum()) / max(w.numel(), 1)
        return out

    def fingerprint(self, model: Any) -> str:
        h = hashlib.sha256(repr(model).encode())
        for key, value in model.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # -- inputs -----------------------------------------------------------------------------------

    def input_specs(self, model: Any) -> list[InputSpec] | None:
        """What ``model`` tells of its inputs (for ``data=random``), as far as it tells.

        A Hugging Face model (``config`` and ``main_input_name``): ``input_ids`` int64 token ids in
        ``[0, vocabulary size)`` (the input embedding's rows, else ``config.vocab_size``) of length
        ``sequence`` (suggested: 128, at most ``max_position_embeddings``) and, when ``forward``
        takes one, an all-ones ``attention_mask``; ``pixel_values`` float of ``config.num_channels``
        x ``config.image_size``. Any other module: one input named after ``forward``'s first
        parameter, int64 ids in ``[0, rows)`` when its first layer is an ``nn.Embedding``, float
        ``[in_channels, ?...]`` when it is a convolution; the sizes it does not tell come from
        ``data.shapes``.
        """
        config = getattr(model, "config", None)
        main = getattr(model, "main_input_name", None)
        if config is not None and isinstance(main, str):
            return _transformers_specs(model, config, main)
        return [_module_spec(model)]

    def check_inputs(self, model: Any, split: Split) -> None:
        """A one-line :class:`DataError` for floating-point data where the model takes integer ids
        (``input_ids``, a first ``nn.Embedding``): torch's own error names no input and no fix."""
        specs = self.input_specs(model) or []
        data = split.inputs
        if len(specs) == 1 and len(data) == 1:
            pairs = [(specs[0], next(iter(data)))]
        else:
            pairs = [(s, s.name) for s in specs if s.name in data]
        for spec, key in pairs:
            dtype = np.dtype(data[key].dtype)
            if spec.high is not None and np.issubdtype(np.dtype(spec.dtype), np.integer) and dtype.kind == "f":
                raise DataError(
                    f"data input {key!r} is {dtype} but the model's input {spec.name!r} takes integer ids in "
                    f"[{spec.low}, {spec.high}); give int64 data (data=random makes them)"
                )

    # -- export -----------------------------------------------------------------------------------

    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Export with a dynamic batch, all weights inside one file; return how: ``{"exporter": ...}``.

        The torch.export-based exporter first (``{"exporter": "torch.export"}``), traced on two
        samples: a dynamic dim traced at size 1 is specialised to 1 (ConvNeXt then fails with
        "Invalid ranges [2:1]"). A model it cannot capture (data-dependent control flow, an op it
        has no rule for) goes through the TorchScript exporter instead, which traces the path the
        example takes: ``{"exporter": "torchscript", "fallback_reason": why torch.export failed}``,
        also logged. Both failing is one :class:`ModelError` with both reasons.

        Outputs are named after the model's: ``logits`` for a tensor, the fields of a Hugging Face
        ``ModelOutput`` (``logits``, ``last_hidden_state``...), ``logits, output_1, ...`` for a
        tuple. Node metadata (stack traces with local paths) is dropped so the same model always
        gives the same bytes.
        """
        import onnx

        example = {k: np.repeat(v, 2, axis=0) if len(v) == 1 else np.asarray(v) for k, v in example.items()}
        args, kwargs, dynamic = self._export_inputs(model, example)
        names = list(kwargs) if kwargs else list(example)
        model.eval()
        with self._export_context(model), _quiet_export_logs():
            outputs = _output_names(model, args, kwargs)
            proto, how = _export(model, args, kwargs, names, outputs, dynamic, Path(path).parent)
        self._finish_export(proto)
        _strip_metadata(proto)
        onnx.save_model(proto, str(path), save_as_external_data=proto.ByteSize() > 1_800_000_000)
        return how

    def _export_inputs(
        self, model: Any, example: Mapping[str, np.ndarray]
    ) -> tuple[list[Any], dict[str, Any], dict[str, dict[int, tuple[str, int, int]]]]:
        """Positional args, keyword args (in ``forward``'s order) and each input's dynamic axes
        ``{axis: (name, min, max)}`` of an export: the batch axis."""
        args, kwargs = self._args(example)
        kwargs = _in_signature_order(model, kwargs)
        return args, kwargs, {name: {0: ("batch", 1, 4096)} for name in example}

    def _export_context(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """What the model is switched to while it is exported (nothing here)."""
        return contextlib.nullcontext()

    def _finish_export(self, proto: Any) -> None:
        """Change the exported graph in place before it is written (nothing here)."""


def _transformers_specs(model: Any, config: Any, main: str) -> list[InputSpec]:
    """The inputs of a Hugging Face model, from its config and ``forward`` (see ``input_specs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if main == "input_ids":
        vocab = getattr(config, "vocab_size", None)
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = getattr(embeddings, "num_embeddings", None) or vocab
        positions = getattr(config, "max_position_embeddings", None)
        seq = min(DEFAULT_SEQUENCE, int(positions)) if positions else DEFAULT_SEQUENCE
        dims = {"sequence": seq}
        specs = [InputSpec("input_ids", "int64", ("sequence",), 0, int(vocab) if vocab else None, dims)]
        if "attention_mask" in params:
            specs.append(InputSpec("attention_mask", "int64", ("sequence",), 1, 2, dims))
        return specs
    dtype = _float_dtype(model)
    if main == "pixel_values":
        channels = int(getattr(config, "num_channels", 3) or 3)
        size = getattr(config, "image_size", None)
        side: tuple[int | str | None, ...] = (None, None)
        if isinstance(size, int):
            side = (size, size)
        elif isinstance(size, list | tuple) and len(size) == 2:
            side = (int(size[0]), int(size[1]))
        return [InputSpec("pixel_values", dtype, (channels, *side))]
    return [InputSpec(main, dtype, None)]


def _module_spec(model: Any) -> InputSpec:
    """The one input of a plain module, as far as its first layer tells (see ``input_specs``)."""
    import torch

    name = "input"
    try:
        params = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        name = params[0].name if params else name
    except (TypeError, ValueError):
        pass
    dtype = _float_dtype(model)
    first = next((m for m in model.modules() if next(m.parameters(recurse=False), None) is not None), None)
    if isinstance(first, torch.nn.Embedding):
        return InputSpec(name, "int64", (None,), 0, int(first.num_embeddings))
    if isinstance(first, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d):
        spatial = {torch.nn.Conv1d: 1, torch.nn.Conv2d: 2, torch.nn.Conv3d: 3}[type(first)]
        return InputSpec(name, dtype, (int(first.in_channels), *([None] * spatial)))
    return InputSpec(name, dtype, None)


def _float_dtype(model: Any) -> str:
    """The numpy name of the model's first floating-point parameter's dtype (float32 without one)."""
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return {torch.float16: "float16", torch.float64: "float64"}.get(p.dtype, "float32")
    return "float32"


def _in_signature_order(model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` in the order ``forward`` declares them (the TorchScript exporter feeds by position)."""
    try:
        order = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return kwargs
    return dict(sorted(kwargs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


@contextlib.contextmanager
def _quiet_export_logs() -> Iterator[None]:
    """Silence the exporters' loggers for the duration (a failed torch.export logs pages of guards)."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch._guards", "torch.fx")
    names += ("onnxscript", "onnx_ir", "transformers")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _output_names(model: Any, args: list[Any], kwargs: dict[str, Any]) -> list[str]:
    """The names of the model's outputs, from one run on the example (see ``export_onnx``)."""
    import torch
    from torch.utils._pytree import tree_leaves

    with torch.inference_mode():
        out = model(*args, **kwargs)
    if isinstance(out, torch.Tensor):
        return ["logits"]

    def tensors(value: Any) -> int:
        return sum(isinstance(t, torch.Tensor) for t in tree_leaves(value))

    if isinstance(out, Mapping):
        names: list[str] = []
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                names.append(str(key))
            else:
                names += [f"{key}_{i}" for i in range(tensors(value))]
        return names
    return ["logits", *(f"output_{i}" for i in range(1, tensors(out)))]


def _export_reason(exc: BaseException) -> str:
    """One line on why an exporter failed (torch.export's own error, not the ONNX wrapper's)."""
    inner = exc.__cause__ if exc.__cause__ is not None else exc
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    return f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _export(
    model: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, tuple[str, int, int]]],
    work_dir: Path,
) -> tuple[Any, dict[str, str]]:
    """The ONNX ModelProto of ``model`` and how it was made: torch.export, else TorchScript."""
    try:
        return _export_dynamo(model, args, kwargs, input_names, output_names, dynamic), {"exporter": "torch.export"}
    except Exception as exc:
        reason = _export_reason(exc)
    try:
        proto = _export_torchscript(model, args, kwargs, input_names, output_names, dynamic, work_dir)
    except Exception as exc:
        raise ModelError(
            f"ONNX export failed with torch.export ({reason}) and with the TorchScript exporter "
            f"({_export_reason(exc)}); make the model traceable (no data-dependent control flow), or export it "
            "yourself and use model=onnx model.path=FILE.onnx"
        ) from exc
    log.warning("torch.export could not export the model (%s); exported it with the TorchScript exporter", reason)
    return proto, {"exporter": "torchscript", "fallback_reason": reason}


def _export_dynamo(
    model: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, tuple[str, int, int]]],
) -> Any:
    """torch.onnx.export(dynamo=True), optimized; dynamic dims of the same name are one ``Dim``."""
    import warnings

    import torch

    dims: dict[str, Any] = {}

    def dim(name: str, low: int, high: int) -> Any:
        return dims.setdefault(name, torch.export.Dim(name, min=low, max=high))

    shapes = {k: {axis: dim(*spec) for axis, spec in axes.items()} for k, axes in dynamic.items()}
    dynamic_shapes: Any = {k: shapes[k] for k in kwargs} if kwargs else tuple(shapes[k] for k in input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            tuple(args),
            kwargs=kwargs or None,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
            report=False,
        )
    return program.model_proto


def _export_torchscript(
    model: Any,
    args: list[Any],
    kwargs: dict[str, Any],
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, tuple[str, int, int]]],
    work_dir: Path,
) -> Any:
    """torch.onnx.export(dynamo=False) into a temporary folder, read back with its weights."""
    import warnings

    import onnx
    import torch

    axes = {k: {axis: spec[0] for axis, spec in dims.items()} for k, dims in dynamic.items()}
    axes.update({name: {0: "batch"} for name in output_names})
    with tempfile.TemporaryDirectory(prefix=".export-", dir=work_dir) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            tuple(args),
            str(file),
            kwargs=kwargs or None,
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
        )
        return onnx.load(str(file))


def _strip_metadata(proto: Any) -> None:
    """Remove per-node metadata and doc strings (local paths, stack traces) in place."""

    def clean_graph(graph: Any) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    clean_graph(attr.g)
                for g in attr.graphs:
                    clean_graph(g)
        for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
            del vi.metadata_props[:]
        for init in graph.initializer:
            del init.metadata_props[:]

    clean_graph(proto.graph)
    del proto.metadata_props[:]
    for fn in proto.functions:
        for node in fn.node:
            del node.metadata_props[:]


@hookimpl
def slimkit_register_adapters(registry: Any) -> None:
    registry.add_adapter(TorchAdapter)


@hookimpl
def slimkit_adapter_for(model: Any) -> str | None:
    """``torch`` for a ``torch.nn.Module`` and for ``.pt``/``.pth`` files."""
    if isinstance(model, str | Path):
        return "torch" if Path(model).suffix in (".pt", ".pth") else None
    torch = sys.modules.get("torch")
    return "torch" if torch is not None and isinstance(model, torch.nn.Module) else None
