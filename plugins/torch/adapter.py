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

import hashlib
import importlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ModelAdapter, ModelConfig, ModelError, ParamCount, hookimpl

PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")


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
                raise ModelError(
                    f"model.path={path} is a pickled model and unpickling runs arbitrary code; pass "
                    "model.trust_pickle=true if you trust the file, or use model.factory + model.weights"
                )
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
        if config.weights:
            self._load_weights(model, Path(config.weights), config.trust_pickle)
        return model.eval()

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
        import torch

        # Files under a run directory or the stage cache were written by slimkit itself.
        return torch.load(path, map_location="cpu", weights_only=False).eval()

    def save(self, model: Any, path: Path) -> None:
        import torch

        torch.save(model, path)

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

    # -- export -----------------------------------------------------------------------------------

    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> None:
        """Export with the torch.export-based exporter, dynamic batch, all weights inside one file.

        Node metadata (stack traces with local paths) is dropped so the same model always gives the
        same bytes.
        """
        import warnings

        import onnx
        import torch

        for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        args, kwargs = self._args(example)
        names = list(example)
        batch = torch.export.Dim("batch", min=1, max=4096)
        if kwargs:
            dynamic: Any = {k: {0: batch} for k in kwargs}
        else:
            dynamic = ({0: batch},)
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                tuple(args),
                kwargs=kwargs or None,
                dynamo=True,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
                report=False,
            )
        proto = program.model_proto
        _strip_metadata(proto)
        onnx.save_model(proto, str(path), save_as_external_data=proto.ByteSize() > 1_800_000_000)


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
