"""The ``hf`` adapter: a local Hugging Face Transformers directory as a slimkit (PyTorch) model.

Model config (``model=hf``, :class:`HfModelConfig`)::

    path: DIR                  # a save_pretrained() directory: config.json + weights (+ tokenizer)
    task: auto                 # auto | sequence-classification | feature-extraction
    dynamic_sequence: true     # ONNX export with a symbolic sequence length (false: fixed, as the data)

``task=auto`` loads ``AutoModelForSequenceClassification`` when the config names a
``...ForSequenceClassification`` architecture, else ``AutoModel`` (the encoder's last hidden state is
the output; fidelity to the original model is then the measure). Everything else (running, counting,
saving, the inputs ``data=random`` makes, the ONNX export and its TorchScript fallback) is the torch
adapter's: a Transformers model is an ``nn.Module``. The export makes the sequence length dynamic too
and exports attention in its eager form.

A finished ``model=hf`` run also writes ``hf/`` in its run directory: the compressed ``model.onnx``
with the ``config.json`` (the compressed model's own when it is a torch module, else the input's)
and the tokenizer files, a directory that loads back (``AutoConfig`` and ``AutoTokenizer.from_pretrained``,
the ONNX file with ONNX Runtime). It is one artifact (kind ``model_dir``): the MLflow tracker puts its
files beside ``model.onnx`` in the logged model ``model``.

transformers is imported inside the methods, and only when an ``hf`` model is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, ModelConfig, ModelError, files, hookimpl
from slimkit.plugins.torch.adapter import TorchAdapter, _first_line, _in_signature_order

TASKS = ("auto", "sequence-classification", "feature-extraction")
#: The run directory's folder that holds the compressed model as a Hugging Face directory.
HF_DIR = "hf"
#: Files of a Hugging Face directory that are weights, not copied into :data:`HF_DIR` (its model is ONNX).
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".onnx.data", ".index.json")


@dataclass
class HfModelConfig(ModelConfig):
    """``model=hf``: a local Hugging Face Transformers directory (see the module docstring)."""

    adapter: str = "hf"
    path: str | None = None
    task: str = "auto"
    dynamic_sequence: bool = True
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task={self.task!r} is not one of {list(TASKS)}; use e.g. auto")


def import_transformers() -> Any:
    """``transformers``, or a one-line :class:`ModelError` saying how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelError(f"model=hf needs the transformers package ({exc}); pip install 'slimkit[hf]'") from exc
    return transformers


class HfAdapter(TorchAdapter):
    """Adapter for local Hugging Face Transformers models (PyTorch)."""

    name = "hf"
    suffixes = (".pt",)
    description = "Hugging Face Transformers directory (local files only), run and exported as PyTorch"
    Config = HfModelConfig

    def load(self, cfg: Mapping[str, Any]) -> Any:
        """Load ``model.path`` with AutoModel / AutoModelForSequenceClassification, no network."""
        options: HfModelConfig = self.model_config(cfg)
        path = options.path
        if not path:
            raise ModelError("model.path is not set; give a Hugging Face model directory: model=hf model.path=DIR")
        p = Path(path)
        if not (p / "config.json").is_file():
            raise ModelError(
                f"model.path={path} is not a Hugging Face model directory (no config.json); "
                "give a directory written by save_pretrained()"
            )
        task = options.task
        tf = import_transformers()
        try:
            config = tf.AutoConfig.from_pretrained(p, local_files_only=True)
            archs = list(getattr(config, "architectures", None) or [])
            classify = task == "sequence-classification" or (
                task == "auto" and any(a.endswith("ForSequenceClassification") for a in archs)
            )
            cls = tf.AutoModelForSequenceClassification if classify else tf.AutoModel
            model = cls.from_pretrained(p, local_files_only=True)
        except Exception as exc:
            raise ModelError(
                f"model.path={path} cannot be loaded by transformers ({_first_line(exc)}); check the directory"
            ) from exc
        model.slimkit_export = {"dynamic_sequence": bool(options.dynamic_sequence)}
        return model.eval()

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits (classification) or the last hidden state (encoder), as float32 numpy."""
        return super().predict(model, {k: np.asarray(v) for k, v in inputs.items()})

    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        """As the torch adapter counts them, with attention in its eager form (the exported one):
        torch's FlopCounterMode has no formula for the CPU SDPA kernel, so the attention scores and
        context products would go uncounted, and the ONNX model of the same encoder would show more
        MACs than the PyTorch one."""
        with _eager_attention(model):
            return super().macs(model, example)

    def _export_inputs(
        self, model: Any, example: Mapping[str, np.ndarray]
    ) -> tuple[list[Any], dict[str, Any], dict[str, dict[int, tuple[str, int, int]]]]:
        """Every input by name (in ``forward``'s order); dynamic batch, and sequence unless
        ``model.dynamic_sequence=false``."""
        import torch

        kwargs = _in_signature_order(model, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()})
        settings = getattr(model, "slimkit_export", {}) or {}
        seq_len = 0
        if settings.get("dynamic_sequence", True):
            seq_len = max((v.shape[1] for v in kwargs.values() if v.dim() > 1), default=0)
        dynamic: dict[str, dict[int, tuple[str, int, int]]] = {}
        for k, v in kwargs.items():
            dynamic[k] = {0: ("batch", 1, 4096)}
            if seq_len and v.dim() > 1:
                dynamic[k][1] = ("sequence", 2, max(seq_len, 512))
        return [], kwargs, dynamic

    def _export_context(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """Attention is exported in its ``eager`` form (MatMul, Add mask, Softmax, MatMul), the model's
        own implementation restored afterwards: the SDPA form adds a NaN guard (IsNaN + Where) and
        more Reshape/Slice nodes to every layer. Both compute the same (output cosine 1.0); the eager
        graph runs as fast in fp32 and 6 % faster as static int8 (BERT 6x384 on ORT, 1 thread: 2.64x
        vs 2.48x over fp32 in one run; docs/QUANTIZATION.md)."""
        return _eager_attention(model)

    def predict_outputs(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The first output only (logits or last_hidden_state), as the export keeps it."""
        return [self.predict(model, inputs)]

    def _finish_export(self, proto: Any) -> None:
        """Keep only the first output (logits or last_hidden_state), as predict() does."""
        while len(proto.graph.output) > 1:
            proto.graph.output.pop()


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Switch a Transformers model to eager attention for the duration, then back."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def write_hf_dir(
    out: Path, onnx_path: Path, source: Path, tokenizer: Path | None = None, torch_model: Path | None = None
) -> Path:
    """Write ``out`` (atomically): ``model.onnx`` (and its external data) from ``onnx_path``, and the
    files of the Hugging Face directory ``source`` but its weights (config, tokenizer, generation
    config), plus those of ``tokenizer`` that ``source`` lacks. ``torch_model``: the compressed model
    (``torch.save``-d, read with the restricted loader), whose ``config`` replaces ``config.json``
    (a technique that removes layers updates it). Returns ``out``."""
    import shutil

    with files.atomic_dir(out) as tmp:
        for folder in (source, tokenizer):
            if folder is None or not Path(folder).is_dir():
                continue
            for path in sorted(Path(folder).iterdir()):
                if path.is_file() and not path.name.endswith(WEIGHT_FILES) and not (tmp / path.name).exists():
                    shutil.copy2(path, tmp / path.name)
        for path in files.model_files(onnx_path):
            shutil.copy2(path, tmp / ("model.onnx" if path == Path(onnx_path) else path.name))
        if torch_model is not None and Path(torch_model).suffix == ".pt":
            with contextlib.suppress(Exception):  # the input's config.json stays
                from slimkit.plugins.torch.safe_load import load_module

                config = getattr(load_module(Path(torch_model)), "config", None)
                if config is not None and hasattr(config, "to_json_file"):
                    config.to_json_file(tmp / "config.json")
    return Path(out)


@hookimpl
def slimkit_register_adapters(registry: Any) -> None:
    """Register the ``hf`` adapter."""
    registry.add_adapter(HfAdapter)


@hookimpl(tryfirst=True)
def slimkit_run_end(ctx: Any, report: Any) -> None:
    """After a ``model=hf`` run: write ``hf/`` (:func:`write_hf_dir`) and log it as one artifact of kind
    ``model_dir`` (before the tracker ends the run: ``tryfirst``)."""
    spec = ctx.spec
    model = spec.model or {}
    run_dir = Path(spec.run_dir)
    onnx_rel = report.artifacts.get("onnx")
    if model.get("adapter") != "hf" or not model.get("path") or not onnx_rel or not (run_dir / onnx_rel).is_file():
        return
    data = spec.data or {}
    tokenizer = Path(data["tokenizer"]) if data.get("tokenizer") else None
    torch_rel = report.artifacts.get("model")
    out = write_hf_dir(
        run_dir / HF_DIR,
        run_dir / onnx_rel,
        Path(model["path"]),
        tokenizer=tokenizer,
        torch_model=run_dir / torch_rel if torch_rel else None,
    )
    report.artifacts["hf"] = HF_DIR
    ctx.artifact(out, "model_dir")
