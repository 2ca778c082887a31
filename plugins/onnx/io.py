"""Reading and writing ONNX files: full checks with one-line errors, external data both ways.

:func:`read_model` checks a user's file step by step so that each way it can be broken gets its own
message: missing, empty, not ONNX at all (a pickle, a zip, text), truncated or corrupt, external data
missing or short, failing the ONNX checker or strict shape inference. :func:`write_model` writes one
file, or a ``.onnx`` plus one external data file when asked or when the tensors exceed what one
protobuf message can hold (2 GiB).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from slimkit.core import ModelError

from .graph import PROTO_LIMIT, external_location, iter_tensors, tensor_bytes, uses_external_data

if TYPE_CHECKING:
    import onnx

# First bytes a serialized ModelProto can start with: the tags of its fields (ir_version, producer,
# domain, model_version, doc_string, graph, opset_import, metadata_props, training_info, functions,
# configuration).
_MODEL_TAGS = {0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA, 0xD2}

_MAGIC = [
    (b"PK\x03\x04", "a zip archive (a torch.save file or an .npz?)"),
    (b"\x80", "a Python pickle (a torch .pt file?)"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model?)"),
]

#: atomic_path (slimkit.core.files) writes to ``.NAME.RANDOM.tmp`` beside ``NAME``.
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _not_onnx(head: bytes) -> str | None:
    """What the file is instead of ONNX, from its first bytes, or None if it may be ONNX."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model"
    if head and head[0] not in _MODEL_TAGS:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError:
            return "not a serialized ONNX ModelProto"
    return None


def check_external_data(model: onnx.ModelProto, base: Path, source: str) -> None:
    """Raise :class:`ModelError` when an external data file the model names is missing or too short."""
    for tensor in iter_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = external_location(tensor)
        file = base / location
        if not location or not file.is_file():
            raise ModelError(
                f"{source} keeps tensor {tensor.name!r} in the external data file {location!r}, which is missing; "
                f"put {location!r} next to the .onnx file (in {base})"
            )
        info = {e.key: e.value for e in tensor.external_data}
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        size = file.stat().st_size
        if length is not None and offset + int(length) > size:
            raise ModelError(
                f"{source}: external data file {location!r} is truncated (tensor {tensor.name!r} needs bytes up to "
                f"{offset + int(length)}, the file has {size}); copy the complete file again"
            )


def read_model(path: Path, source: str | None = None, *, check: bool = True) -> tuple[onnx.ModelProto, bool]:
    """Load an ONNX file with its external data; with ``check``, run the ONNX checker and strict shape
    inference. Return the model and whether the file kept tensors in external data.

    Every failure is a one-line :class:`ModelError` naming ``source`` (default: the path).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise ModelError(f"{source} does not exist; give the path of an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{source} is empty (0 bytes); export the model again")
    with open(path, "rb") as f:
        head = f.read(16)
    what = _not_onnx(head)
    if what is not None:
        raise ModelError(f"{source} is {what}, not an ONNX model; give an .onnx file (torch models: model=torch)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{source} is truncated or corrupt ({size} bytes; protobuf parsing failed: {_first_line(exc)}); "
            "copy or export the file again"
        ) from exc
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelError(
            f"{source} parses as protobuf but is not an ONNX model (no IR version or no graph outputs); "
            "give an .onnx file, or copy the file again if it is truncated"
        )
    check_external_data(model, path.parent, source)
    external = any(uses_external_data(t) for t in iter_tensors(model))
    if check:
        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise ModelError(
                f"{source} fails the ONNX checker: {_first_line(exc)}; fix the exporter's output or export again"
            ) from exc
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:
        raise ModelError(f"{source}: its external data cannot be read ({_first_line(exc)}); copy it again") from exc
    if check:
        _strict_shape_inference(model, path, source)
    return model, external


def _strict_shape_inference(model: onnx.ModelProto, path: Path, source: str) -> None:
    import onnx

    try:
        if tensor_bytes(model) < PROTO_LIMIT:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        else:
            with tempfile.TemporaryDirectory(prefix=".slimkit-infer-", dir=path.parent) as tmp:
                onnx.shape_inference.infer_shapes_path(
                    str(path), str(Path(tmp) / "inferred.onnx"), check_type=True, strict_mode=True
                )
    except Exception as exc:
        raise ModelError(
            f"{source} fails ONNX shape inference: {_first_line(exc)}; the graph's types or shapes are "
            "inconsistent, export it again"
        ) from exc


def final_name(path: Path) -> str:
    """The name ``path`` will have: the target's name when ``path`` is an atomic_path temporary."""
    m = _ATOMIC_TMP.match(Path(path).name)
    return m.group("name") if m else Path(path).name


def write_model(model: onnx.ModelProto, path: Path, *, external: bool = False) -> list[Path]:
    """Write ``model`` to ``path``; return the files written.

    With ``external`` (or when the tensors exceed 1.8 GB) tensors of 1 KiB and more go into one data
    file ``<name>.data`` beside it, named after the file's final name (so an atomic temporary file
    keeps pointing at the right data after its rename). The data file is moved into place before
    the ``.onnx`` file. ``model`` is left as it was (its tensors are read back into memory).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not external and tensor_bytes(model) < PROTO_LIMIT:
        onnx.save_model(model, str(path))
        return [path]
    location = final_name(path) + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_model = Path(tmp) / "model.onnx"
        try:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=location,
                size_threshold=1024,
            )
        finally:
            # save_model moved the tensors of the in-memory model out to the file: read them back.
            load_external_data_for_model(model, tmp)
        written = [path]
        if (Path(tmp) / location).exists():
            os.replace(Path(tmp) / location, path.parent / location)
            written.append(path.parent / location)
        os.replace(tmp_model, path)
    return written


def external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (those that exist), without loading tensors."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    names = {external_location(t) for t in iter_tensors(model) if uses_external_data(t)}
    return sorted(Path(path).parent / n for n in names if n and (Path(path).parent / n).is_file())


def as_onnx(model: object, adapter: object, example: object, work_dir: Path) -> onnx.ModelProto:
    """``model`` as an ONNX ``ModelProto``: itself for the ``onnx`` adapter, else the adapter's ONNX export.

    Techniques that work on ONNX graphs and take other frameworks' models (``output_framework =
    "onnx"``) start here.
    """
    if getattr(adapter, "name", "") == "onnx":
        return model  # type: ignore[return-value]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=work_dir) as tmp:
        path = Path(tmp) / "model.onnx"
        adapter.export_onnx(model, path, example)  # type: ignore[attr-defined]
        exported, _ = read_model(path, check=False)
    return exported
