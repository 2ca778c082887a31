"""Loading a whole ``nn.Module`` that ``torch.save`` wrote, without running code from the file.

``torch.load(weights_only=False)`` unpickles: a file can name any function and have it called.
slimkit writes whole modules (a stage's model, the cache), and reads them back; a cache folder is
easy to hand someone (a cloned repository, a shared disk), so reading must not trust the file.
:func:`load_module` uses ``torch.load(weights_only=True)`` — torch's restricted unpickler — and
allows, besides tensors and plain containers, only the globals the file names that are

- ``nn.Module`` subclasses (unpickling sets their attributes; it calls no method of theirs but the
  module's own ``__setstate__``),
- Hugging Face config classes, enums,
- functions of ``torch.nn.functional`` and ``torch._C._nn`` (activations stored as attributes),

each resolved from a module that is already imported or that belongs to torch, transformers,
torchvision or slimkit (importing any other module is code the file would choose). Anything else
raises :class:`UnsafeModuleFile` naming it; the caller decides (the cache recomputes the stage, a
user file needs ``model.trust_pickle=true``).
"""

from __future__ import annotations

import enum
import importlib
import sys
from pathlib import Path
from typing import Any

#: Top-level packages whose modules may be imported to resolve a global the file names.
IMPORTABLE = ("torch", "transformers", "torchvision", "slimkit")

#: Modules whose functions a module may hold as attributes (activations).
FUNCTION_MODULES = ("torch.nn.functional", "torch._C._nn")


class UnsafeModuleFile(Exception):
    """The file names a global that loading it would have to trust."""


def _resolve(qualname: str) -> Any:
    """The object ``module.attr...`` names, importing only modules of :data:`IMPORTABLE` packages."""
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        module = sys.modules.get(module_name)
        if module is None and module_name.split(".")[0] in IMPORTABLE:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        if module is None:
            continue
        obj: Any = module
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def _hf_config(cls: type) -> bool:
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PretrainedConfig", None) if transformers else None
    return base is not None and issubclass(cls, base)


def allowed(obj: Any) -> bool:
    """Whether loading may construct / reference ``obj`` (see the module docstring)."""
    import torch

    if isinstance(obj, type):
        return issubclass(obj, torch.nn.Module) or issubclass(obj, enum.Enum) or _hf_config(obj)
    return callable(obj) and getattr(obj, "__module__", None) in FUNCTION_MODULES


def vetted_globals(path: Path) -> list[Any]:
    """The globals beyond torch's defaults that the file at ``path`` names, each :func:`allowed`;
    raise :class:`UnsafeModuleFile` naming the first that is not."""
    import torch

    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    out = []
    for name in names:
        obj = _resolve(name)
        if obj is None or not allowed(obj):
            raise UnsafeModuleFile(name)
        out.append(obj)
    return out


def load_module(path: Path) -> Any:
    """The ``nn.Module`` in ``path`` (written by ``torch.save(module)``), in eval mode, loaded with
    torch's restricted unpickler; :class:`UnsafeModuleFile` if it names anything not :func:`allowed`."""
    import torch

    extra = vetted_globals(path)
    with torch.serialization.safe_globals(extra):
        try:
            model = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's unpickler refused something the scan did not see
            raise UnsafeModuleFile(str(exc).strip().splitlines()[-1][:200]) from exc
    if not isinstance(model, torch.nn.Module):
        raise UnsafeModuleFile(f"a {type(model).__name__}, not an nn.Module")
    return model.eval()
