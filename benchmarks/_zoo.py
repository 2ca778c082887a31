"""The zoo: real third-party models (and real architectures) for tests/zoo and benchmarks/zoo.py.

Nobody here wrote these models, which is the point: slimkit must compress what it is given.

Files from pinned wheels (``pip download --no-deps``, hashes checked, model files read out of the
wheel with :mod:`zipfile`; the packages are never installed, their dependencies are not wanted):

=============  ===============================  ==============================================================
name           wheel                            what
=============  ===============================  ==============================================================
``ocr_det``    rapidocr-onnxruntime 1.4.4       PP-OCRv4 text detector (paddle2onnx, opset 12): x [N,3,H,W]
                                                -> probability map [N,1,H,W]
``ocr_rec``    rapidocr-onnxruntime 1.4.4       PP-OCRv4 text recogniser (SVTR neck, CTC): x [N,3,48,W] ->
                                                [N,W/8,6625] softmax
``nudenet``    nudenet 3.4.2                    YOLOv8n detector (opset 17): images [N,3,H,W] -> [N,22,A]
                                                (4 box coordinates and 18 class scores joined by a Concat)
``silero_vad`` silero-vad 6.2.3                 streaming voice-activity detector (opset 16, If on ``sr``):
                                                input [N,576] (64 context + 512 new samples at 16 kHz),
                                                state [2,N,128] (batch on axis 1), sr: int64 scalar ->
                                                output [N,1], stateN
``onet``       facenet-pytorch 2.6.0            MTCNN ONet state_dict (MIT): 3x48x48 face crops -> box
                                                regression (4), landmarks (10), face probability (2)
=============  ===============================  ==============================================================

Architectures from transformers configs with seeded random initialisation (no hub): ``resnet50``,
``mobilenet_v2``, ``convnext_tiny``, ``vit_small``, ``distilbert``; each takes ``tiny=True`` for a
same-family miniature (fewer blocks, narrower) that fast tests use.

Every model has an input generator that draws data looking like the real thing (rendered text pages
and lines, drawn scenes, drawn faces, synthetic voiced speech, tokenised sentences), deterministic
from a seed and preprocessed as the model's own package does; :func:`write_npz` saves it in
slimkit's ``data=npz`` format (arrays named after the model's inputs, first axis = samples; see
:data:`WHOLE_INPUTS` for the inputs without a batch axis first).

``python benchmarks/_zoo.py fetch`` (``make zoo``) downloads into ``$SLIMKIT_ZOO`` or
``~/.cache/slimkit/zoo``.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# -- the files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the model files read out of it (``{cache file name: member path}``)."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, str]


WHEELS: tuple[Wheel, ...] = (
    Wheel(
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        {
            "ocr_det.onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            "ocr_rec.onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        },
    ),
    Wheel(
        "nudenet==3.4.2",
        "nudenet-3.4.2-py3-none-any.whl",
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
        {"nudenet.onnx": "nudenet/320n.onnx"},
    ),
    Wheel(
        "silero-vad==6.2.3",
        "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        {"silero_vad.onnx": "silero_vad/data/silero_vad.onnx"},
    ),
    Wheel(
        "facenet-pytorch==2.6.0",
        "facenet_pytorch-2.6.0-py3-none-any.whl",
        "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        {"onet.pt": "facenet_pytorch/data/onet.pt"},
    ),
)

#: The third-party ONNX files, by zoo name.
ONNX_MODELS: tuple[str, ...] = ("ocr_det", "ocr_rec", "nudenet", "silero_vad")

#: The .npz layout of inputs without a batch axis on axis 0 (slimkit's convention, see
#: slimkit.plugins.onnx.runtime.unbatched): such an array has one axis more than the model's input,
#: each sample is a complete input (silero_vad: ``state`` [N,2,1,128], ``sr`` [N]), and the model
#: is fed one sample at a time; other arrays have samples on the model's batch axis.
WHOLE_INPUTS: dict[str, tuple[str, ...]] = {"silero_vad": ("state", "sr")}


#: Outputs that join quantities of different kinds, judged part by part: ``{model: {output index:
#: {part: (start, stop)}}}`` along axis 1 (NudeNet: 4 box coordinates in pixels, then 18 class scores).
OUTPUT_PARTS: dict[str, dict[int, dict[str, tuple[int, int]]]] = {"nudenet": {0: {"boxes": (0, 4), "scores": (4, 22)}}}


class ZooUnavailable(RuntimeError):
    """The zoo cannot be fetched (no network, no pip, a wheel whose hash does not match)."""


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """``cache``, else ``$SLIMKIT_ZOO``, else ``~/.cache/slimkit/zoo``."""
    if cache is None:
        cache = os.environ.get("SLIMKIT_ZOO") or Path.home() / ".cache" / "slimkit" / "zoo"
    return Path(cache).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(wheel: Wheel, folder: Path) -> Path:
    """The wheel in ``folder/wheels``, downloaded with pip (hash-checked) unless already there."""
    path = folder / "wheels" / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    req = folder / "wheels" / f"{wheel.filename}.{os.getpid()}.txt"
    req.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
           "--disable-pip-version-check", "-q", "-d", str(path.parent), "-r", str(req)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ZooUnavailable(f"pip download {wheel.requirement} failed: {exc}") from exc
    finally:
        req.unlink(missing_ok=True)
    if proc.returncode != 0 or not path.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        raise ZooUnavailable(f"pip download {wheel.requirement} failed: {lines[-1] if lines else proc.returncode}")
    if _sha256(path) != wheel.sha256:
        raise ZooUnavailable(f"{path} does not have the pinned sha256 {wheel.sha256}; delete it and fetch again")
    return path


def fetch(cache: str | os.PathLike[str] | None = None) -> Path:
    """Download the pinned wheels (once) and extract the model files into ``cache`` (see
    :func:`cache_dir`); returns the folder. Idempotent: files already there are kept.
    :class:`ZooUnavailable` when a wheel cannot be downloaded."""
    folder = cache_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    for wheel in WHEELS:
        stamp = folder / f".{wheel.filename}.extracted"
        if stamp.is_file() and all((folder / name).is_file() for name in wheel.members):
            continue
        path = _download(wheel, folder)
        with zipfile.ZipFile(path) as zf:
            for name, member in wheel.members.items():
                tmp = folder / f".{name}.{os.getpid()}.tmp"  # test workers may fetch at once
                tmp.write_bytes(zf.read(member))
                os.replace(tmp, folder / name)
        stamp.write_text(wheel.sha256 + "\n")
    return folder


def model_path(name: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """The file of a zoo model (``ocr_det`` -> ``.../ocr_det.onnx``, ``onet`` -> ``.../onet.pt``),
    fetched if missing."""
    folder = cache_dir(cache)
    file = f"{name}.pt" if name == "onet" else f"{name}.onnx"
    path = folder / file
    if not path.is_file():
        fetch(folder)
    if not path.is_file():
        raise KeyError(f"no zoo file {file!r}; known: {[n for w in WHEELS for n in w.members]}")
    return path


# -- torch models ---------------------------------------------------------------------------------


class ONet(nn.Module):
    """MTCNN ONet, as facenet_pytorch/models/mtcnn.py defines it (same module names, so the released
    state_dict loads): 3x48x48 -> (box regression [4], landmarks [10], face probability softmax [2])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        a = self.softmax6_1(self.dense6_1(x))
        b = self.dense6_2(x)
        c = self.dense6_3(x)
        return b, c, a


def onet(pretrained: bool = True, cache: str | None = None) -> Any:
    """MTCNN ONet with facenet-pytorch's released weights (``pretrained=False``: the architecture
    only, e.g. for ``model.weights=.../onet.pt``). ``model=torch model.factory=_zoo:onet``."""

    model = ONet()
    if pretrained:
        state = torch.load(model_path("onet", cache), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def _seeded(build: Callable[[], Any], seed: int) -> Any:

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def calibrate_batchnorm(model: Any, side: int, n: int = 8, seed: int = 1234) -> Any:
    """Set every BatchNorm's running statistics to those of ``n`` zoo images (:func:`image_inputs`
    at ``side``), as training would have left them: with the initial statistics (mean 0, var 1) a
    randomly initialised deep CNN gives the same (or vanishing) logits for every input, which makes
    fidelity meaningless. Returns the model in eval mode."""

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
    x = torch.from_numpy(image_inputs(n, seed, side)["pixel_values"])
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def resnet50(tiny: bool = False, num_labels: int = 1000, seed: int = 0) -> Any:
    """ResNet-50 (``ResNetConfig()``'s defaults: bottleneck blocks 3/4/6/3, 64..2048 channels), random
    init, BatchNorm statistics from zoo images (:func:`calibrate_batchnorm`). ``tiny``: the same
    bottleneck design with one block per stage and a quarter of the width (calibrated at 64x64)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    kw: dict[str, Any] = {}
    if tiny:
        kw = {"embedding_size": 16, "hidden_sizes": [64, 128, 256, 512], "depths": [1, 1, 1, 1]}
    config = ResNetConfig(num_labels=num_labels, **kw)
    model = _seeded(lambda: ResNetForImageClassification(config), seed)
    return calibrate_batchnorm(model, 64 if tiny else 224)


def mobilenet_v2(tiny: bool = False, num_labels: int = 1000, seed: int = 0, image_size: int = 224) -> Any:
    """MobileNetV2 1.0 (inverted residuals, ReLU6, depthwise convs), random init, BatchNorm statistics
    from zoo images (:func:`calibrate_batchnorm`). ``tiny``: width 0.35, calibrated at 64x64."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(num_labels=num_labels, image_size=image_size, depth_multiplier=0.35 if tiny else 1.0)
    model = _seeded(lambda: MobileNetV2ForImageClassification(config), seed)
    return calibrate_batchnorm(model, 64 if tiny else image_size)


def convnext_tiny(tiny: bool = False, num_labels: int = 1000, seed: int = 0) -> Any:
    """ConvNeXt-T (depths 3/3/9/3, 96..768 channels, 7x7 depthwise, LayerNorm, GELU), random init.
    ``tiny``: one block per stage at a quarter of the width."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    kw: dict[str, Any] = {}
    if tiny:
        kw = {"hidden_sizes": [24, 48, 96, 192], "depths": [1, 1, 1, 1]}
    config = ConvNextConfig(num_labels=num_labels, **kw)
    return _seeded(lambda: ConvNextForImageClassification(config), seed)


def vit_small(tiny: bool = False, num_labels: int = 1000, seed: int = 0, image_size: int = 224) -> Any:
    """ViT-S/16 (hidden 384, 6 heads, 12 layers, MLP 1536), random init. ``tiny``: 2 layers, hidden
    192, 3 heads."""
    from transformers import ViTConfig, ViTForImageClassification

    layers, hidden, heads = (2, 192, 3) if tiny else (12, 384, 6)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        patch_size=16,
        image_size=image_size,
        num_labels=num_labels,
    )
    return _seeded(lambda: ViTForImageClassification(config), seed)


def distilbert(tiny: bool = False, num_labels: int = 2, seed: int = 0, vocab_size: int | None = None) -> Any:
    """DistilBERT (``DistilBertConfig()``: 6 layers, dim 768, 12 heads), sequence classification,
    random init. ``tiny``: 2 layers, dim 128, 2 heads, vocabulary 2048 (what :func:`text_inputs`
    draws from). The init range is wider than the default 0.02 (0.05; tiny: 0.2): at 0.02 the
    [CLS] logits barely depend on the sentence, so every input would look alike."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    kw: dict[str, Any] = {"n_layers": 2, "dim": 128, "n_heads": 2, "hidden_dim": 512} if tiny else {}
    vocab = vocab_size or (TINY_VOCAB if tiny else 30522)
    config = DistilBertConfig(vocab_size=vocab, num_labels=num_labels, initializer_range=0.2 if tiny else 0.05, **kw)
    return _seeded(lambda: DistilBertForSequenceClassification(config), seed)


#: The torch models: name -> factory (``model.factory=_zoo:NAME`` with ``benchmarks/`` on PYTHONPATH).
TORCH_MODELS: dict[str, Callable[..., Any]] = {
    "onet": onet,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "convnext_tiny": convnext_tiny,
    "vit_small": vit_small,
    "distilbert": distilbert,
}


class Logits(nn.Module):
    """``model``'s logits tensor (a Hugging Face output's ``.logits``; other outputs as they are),
    called with keyword arguments named ``names`` in order: clean ONNX outputs and input names."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.inner = model
        self.names = names

    def forward(self, *args: torch.Tensor) -> Any:
        out = self.inner(**dict(zip(self.names, args, strict=True))) if len(args) > 1 else self.inner(*args)
        return out.logits if hasattr(out, "logits") else out


def output_names(name: str) -> list[str]:
    """Output names of a torch zoo model's ONNX export."""
    return ["box", "landmarks", "prob"] if name == "onet" else ["logits"]


def export_onnx(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    names: list[str] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model`` fed ``inputs`` (one batch, names = forward's argument names) to ``path``
    with the TorchScript exporter (``dynamo=False``), batch axis dynamic; returns the path."""

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(inputs)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(inputs[k][:1])) for k in keys)
    names = names or ["logits"]
    dynamic = {k: {0: "batch"} for k in keys} | {n: {0: "batch"} for n in names}
    module = Logits(model, keys).eval()
    with torch.inference_mode():
        torch.onnx.export(
            module, tensors, str(path), input_names=keys, output_names=names, dynamic_axes=dynamic,
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    return path


# -- inputs ---------------------------------------------------------------------------------------

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

WORDS = (
    "the of and to in is for on with as by at from that this are be was it an or not have has you we "
    "invoice total amount date number customer order payment account balance due tax price item quantity "
    "description address street city road phone email station train ticket platform departure arrival "
    "menu coffee tea bread soup salad chicken rice water juice open closed monday friday sunday morning "
    "report figure table section chapter page summary results method model data sample value energy "
    "model network image text speech audio signal voice window door garden house river mountain market "
    "please thank welcome exit entrance warning caution parking office meeting schedule delivery "
    "january march june october december north south east west left right main first second third"
).split()

TINY_VOCAB = 2048
_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102}


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _phrase(rng: np.random.Generator, n_words: int) -> str:
    parts = []
    for _ in range(n_words):
        r = rng.random()
        if r < 0.12:
            parts.append(f"{rng.integers(1, 9999)}")
        elif r < 0.17:
            parts.append(f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}")
        elif r < 0.2:
            parts.append(f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 30)}")
        else:
            w = str(rng.choice(WORDS))
            parts.append(w.capitalize() if rng.random() < 0.2 else w.upper() if rng.random() < 0.05 else w)
    return " ".join(parts)


def _paper(rng: np.random.Generator, w: int, h: int) -> Any:
    """A page-like background: off-white with a slight tint, gradient and grain."""
    from PIL import Image

    base = rng.uniform(205, 250, 3)
    yy = np.linspace(0, 1, h)[:, None, None]
    img = base + rng.uniform(-20, 5) * yy + rng.normal(0, rng.uniform(1, 6), (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def render_page(rng: np.random.Generator, side: int) -> Any:
    """A rendered document page (``side`` x ``side`` RGB): a title, lines of text in several sizes,
    sometimes a table frame and a stamp, lightly blurred, as a phone photo of a receipt or page."""
    from PIL import ImageDraw, ImageFilter

    scale = side / 736
    img = _paper(rng, side, side)
    draw = ImageDraw.Draw(img)
    y = int(rng.uniform(10, 40) * scale)
    ink = tuple(int(v) for v in rng.uniform(0, 70, 3))
    first = True
    while y < side - 20 * scale:
        size = max(8, int((rng.uniform(26, 40) if first else rng.uniform(14, 26)) * scale))
        x = int(rng.uniform(10, 80) * scale)
        text = _phrase(rng, int(rng.integers(2, 4 if first else 9)))
        draw.text((x, y), text, fill=ink, font=_font(size))
        if rng.random() < 0.3:  # a right-aligned amount on the same line
            amount = f"{rng.integers(1, 999)}.{rng.integers(0, 99):02d}"
            draw.text((side - int(rng.uniform(70, 130) * scale), y), amount, fill=ink, font=_font(size))
        if rng.random() < 0.1:
            draw.line((x, y + size + 3, side - x, y + size + 3), fill=ink, width=max(1, int(2 * scale)))
        y += int(size * rng.uniform(1.3, 2.2))
        first = False
    if rng.random() < 0.3:
        cx, cy, r = rng.uniform(0.2, 0.8) * side, rng.uniform(0.2, 0.8) * side, rng.uniform(30, 60) * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(180, 40, 40), width=max(1, int(3 * scale)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def ocr_det_inputs(n: int, seed: int = 0, side: int = 736) -> dict[str, np.ndarray]:
    """``x`` [n,3,side,side]: rendered pages preprocessed as rapidocr's detector does (sides multiples
    of 32, /255, ImageNet mean/std, CHW)."""
    side = max(32, int(round(side / 32)) * 32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        arr = np.asarray(render_page(rng, side), np.float32) / 255.0
        out[i] = ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return {"x": out}


def render_line(rng: np.random.Generator) -> Any:
    """One cropped text line (RGB), as the detector's boxes hand it to the recogniser."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(20, 36))
    text = _phrase(rng, int(rng.integers(1, 6)))
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(2, 8))
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    img = _paper(rng, w, h) if rng.random() < 0.7 else Image.new("RGB", (w, h), tuple(rng.integers(0, 256, 3).tolist()))
    bg = np.asarray(img).mean()
    ink = (20, 20, 20) if bg > 128 else (240, 240, 240)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill=ink, font=font)
    return img


def ocr_rec_inputs(n: int, seed: int = 0, width: int = 320) -> dict[str, np.ndarray]:
    """``x`` [n,3,48,width]: text lines resized to height 48 (aspect kept, at most ``width`` wide),
    (x/255 - 0.5)/0.5, zero-padded on the right, as rapidocr's recogniser does."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, 48, width), np.float32)
    for i in range(n):
        img = render_line(rng)
        w = min(width, max(1, math.ceil(48 * img.width / img.height)))
        arr = np.asarray(img.resize((w, 48), Image.BILINEAR), np.float32) / 255.0
        out[i, :, :, :w] = ((arr - 0.5) / 0.5).transpose(2, 0, 1)
    return {"x": out}


def _figure(draw: Any, rng: np.random.Generator, cx: float, base: float, height: float) -> None:
    """A person-like figure: head, torso, arms, legs, in clothes colours and a skin tone."""
    skin = tuple(int(v) for v in rng.choice([(233, 192, 160), (198, 134, 66), (141, 85, 36), (255, 219, 172)]))
    cloth = tuple(int(v) for v in rng.integers(0, 256, 3))
    legs = tuple(int(v) for v in rng.integers(0, 120, 3))
    head = height / 7
    w = height / 4
    draw.ellipse((cx - head / 2, base - height, cx + head / 2, base - height + head), fill=skin)
    top = base - height + head
    draw.rounded_rectangle((cx - w / 2, top, cx + w / 2, top + height * 0.42), radius=w / 5, fill=cloth)
    arm = max(2, int(w / 4))
    for side in (-1, 1):
        draw.line((cx + side * w / 2, top + 4, cx + side * w * rng.uniform(0.6, 1.5), top + height * 0.4),
                  fill=skin if rng.random() < 0.5 else cloth, width=arm)  # fmt: skip
        draw.line((cx + side * w / 4, top + height * 0.42, cx + side * rng.uniform(w / 5, w / 2), base),
                  fill=legs, width=max(2, int(w / 3)))  # fmt: skip


def render_scene(rng: np.random.Generator, side: int, people: bool = True) -> Any:
    """An outdoor/indoor-like scene (``side`` x ``side`` RGB): sky or wall gradient, ground, objects
    (boxes, balls, trees, windows) and person-like figures, lightly blurred and noisy."""
    from PIL import Image, ImageDraw, ImageFilter

    yy = np.linspace(0, 1, side)[:, None, None]
    top, bottom = rng.uniform(60, 250, 3), rng.uniform(40, 200, 3)
    horizon = rng.uniform(0.45, 0.75)
    ground = rng.uniform(30, 160, 3)
    arr = np.where(yy < horizon, top + (bottom - top) * yy / horizon, ground + 40 * (yy - horizon))
    arr = np.broadcast_to(arr, (side, side, 3)) + rng.normal(0, 4, (side, side, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = side / 320
    for _ in range(int(rng.integers(3, 9))):
        kind = rng.integers(0, 4)
        x, y = rng.uniform(0, side), rng.uniform(0.2, 1.0) * side
        r = rng.uniform(8, 50) * s
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        if kind == 0:
            draw.rectangle((x - r, y - r, x + r, y + r * rng.uniform(0.5, 1.5)), fill=color)
        elif kind == 1:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        elif kind == 2:  # a tree
            draw.rectangle((x - r / 6, y - r, x + r / 6, y + r), fill=(90, 60, 30))
            draw.ellipse((x - r, y - 2.2 * r, x + r, y - 0.4 * r), fill=(30, int(rng.integers(90, 160)), 40))
        else:  # a window grid
            draw.rectangle((x - r, y - r, x + r, y + r), outline=color, width=max(1, int(3 * s)))
            draw.line((x, y - r, x, y + r), fill=color, width=max(1, int(2 * s)))
    if people:
        for _ in range(int(rng.integers(1, 4))):
            h = rng.uniform(0.3, 0.8) * side
            _figure(draw, rng, rng.uniform(0.15, 0.85) * side, min(side - 2, rng.uniform(0.6, 1.05) * side), h)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))


def nudenet_inputs(n: int, seed: int = 0, side: int = 320) -> dict[str, np.ndarray]:
    """``images`` [n,3,side,side]: drawn scenes with people, RGB /255, CHW (nudenet's 320 letterbox)."""
    side = max(32, int(round(side / 32)) * 32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        out[i] = (np.asarray(render_scene(rng, side), np.float32) / 255.0).transpose(2, 0, 1)
    return {"images": out}


def image_inputs(n: int, seed: int = 0, side: int = 224, name: str = "pixel_values") -> dict[str, np.ndarray]:
    """``name`` [n,3,side,side]: drawn scenes normalised with ImageNet's mean/std (the transformers
    image processors' default), for the image classifiers."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        arr = np.asarray(render_scene(rng, side, people=rng.random() < 0.5), np.float32) / 255.0
        out[i] = ((arr - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return {name: out}


def render_face(rng: np.random.Generator, side: int = 48) -> Any:
    """A face crop as MTCNN's R-Net hands it to the O-Net: a skin-toned oval filling most of the
    square, hair, eyes, brows, nose and mouth, shifted and tilted a little, on a background."""
    from PIL import Image, ImageDraw, ImageFilter

    big = side * 4  # drawn large, then downsampled (anti-aliased like a resized photo crop)
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    skin = np.array(rng.choice([(233, 192, 160), (198, 134, 66), (141, 85, 36), (255, 219, 172), (224, 172, 105)]))
    skin = tuple(int(v) for v in np.clip(skin + rng.normal(0, 10, 3), 0, 255))
    cx, cy = big / 2 + rng.normal(0, big * 0.05), big / 2 + rng.normal(0, big * 0.05)
    fw, fh = big * rng.uniform(0.32, 0.42), big * rng.uniform(0.42, 0.52)
    hair = tuple(int(v) for v in rng.integers(0, 90, 3))
    if rng.random() < 0.85:
        draw.ellipse((cx - fw * 1.08, cy - fh * 1.1, cx + fw * 1.08, cy + fh * 0.3), fill=hair)
    draw.ellipse((cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    eye_y, eye_dx = cy - fh * 0.15, fw * rng.uniform(0.35, 0.45)
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        draw.ellipse((ex - fw * 0.18, eye_y - fh * 0.07, ex + fw * 0.18, eye_y + fh * 0.07), fill=(245, 245, 245))
        draw.ellipse((ex - fw * 0.08, eye_y - fh * 0.07, ex + fw * 0.08, eye_y + fh * 0.07), fill=(40, 30, 20))
        draw.line((ex - fw * 0.2, eye_y - fh * 0.2, ex + fw * 0.2, eye_y - fh * 0.22), fill=hair, width=int(big / 40))
    shade = tuple(int(v * 0.8) for v in skin)
    draw.line((cx, eye_y + fh * 0.05, cx - fw * 0.08, cy + fh * 0.3, cx + fw * 0.05, cy + fh * 0.32), fill=shade,
              width=int(big / 60))  # fmt: skip
    mouth_y = cy + fh * rng.uniform(0.5, 0.6)
    draw.chord((cx - fw * 0.4, mouth_y - fh * 0.12, cx + fw * 0.4, mouth_y + fh * 0.12), 0, 180, fill=(150, 50, 60))
    img = img.rotate(rng.normal(0, 8), resample=Image.BILINEAR, fillcolor=bg)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5))).resize((side, side), Image.BILINEAR)


def face_inputs(n: int, seed: int = 0, side: int = 48, name: str = "input") -> dict[str, np.ndarray]:
    """``name`` [n,3,48,48]: drawn face crops, (x - 127.5) / 128 as facenet-pytorch's MTCNN feeds the O-Net."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        out[i] = ((np.asarray(render_face(rng, side), np.float32) - 127.5) * 0.0078125).transpose(2, 0, 1)
    return {name: out}


def speech(rng: np.random.Generator, seconds: float, sr: int = 16000) -> np.ndarray:
    """Synthetic voiced speech with pauses: a glottal pulse train (pitch gliding around 90-250 Hz)
    through three formant resonators that move from syllable to syllable, syllable-rate (3-6 Hz)
    amplitude envelopes, fricative noise bursts, room noise; float32 in [-1, 1]."""
    from scipy.signal import lfilter

    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(90, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t))
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    source = lfilter([1.0], [1.0, -0.95], pulses)  # a smoother glottal flow
    out = np.zeros(n)
    seg = int(sr / rng.uniform(3, 6))
    for start in range(0, n, seg):
        stop = min(n, start + seg)
        chunk = source[start:stop]
        voiced = np.zeros_like(chunk)
        for fc, bw in ((rng.uniform(300, 900), 80), (rng.uniform(900, 2300), 120), (rng.uniform(2300, 3200), 160)):
            r = math.exp(-math.pi * bw / sr)
            a = [1.0, -2 * r * math.cos(2 * math.pi * fc / sr), r * r]
            voiced += lfilter([1 - r], a, chunk)
        env = np.sin(np.linspace(0, np.pi, stop - start)) ** 2
        if rng.random() < 0.25:  # a pause
            env *= 0.0
        elif rng.random() < 0.2:  # a fricative
            voiced = rng.normal(0, 1, stop - start) * np.hanning(stop - start)
        out[start:stop] = voiced * env
    out /= np.abs(out).max() + 1e-9
    out = out * rng.uniform(0.1, 0.6) + rng.normal(0, rng.uniform(0.001, 0.01), n)
    return np.clip(out, -1, 1).astype(np.float32)


def silero_inputs(
    n: int, seed: int = 0, cache: str | None = None, recorded_state: bool = True
) -> dict[str, np.ndarray]:
    """``input`` [n,576] (64 samples of context + a 512-sample chunk at 16 kHz, as silero-vad's
    OnnxWrapper feeds it), ``state`` [n,2,1,128] and ``sr`` [n] (16000): the model takes state
    [2,batch,128] and sr as a scalar, so those arrays hold one whole input per sample (see
    :data:`WHOLE_INPUTS`). The chunks are pieces of synthetic utterances (every 4th chunk) and each
    ``state`` is the one the model itself carried to that chunk (``recorded_state=False``: zeros)."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    session = None
    if recorded_state:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(model_path("silero_vad", cache)), opts, providers=["CPUExecutionProvider"])
    inputs = np.empty((n, 576), np.float32)
    states = np.zeros((n, 2, 1, 128), np.float32)
    i = 0
    while i < n:
        audio = np.concatenate([np.zeros(64, np.float32), speech(rng, rng.uniform(1.0, 3.0))])
        state = np.zeros((2, 1, 128), np.float32)
        for k, start in enumerate(range(64, len(audio) - 512 + 1, 512)):
            x = audio[start - 64 : start + 512]
            if k % 4 == 3 and i < n:  # consecutive chunks of one utterance would be near duplicates
                inputs[i], states[i] = x, state
                i += 1
            if session is not None:
                _, state = session.run(None, {"input": x[None], "state": state, "sr": np.array(16000, np.int64)})
    return {"input": inputs, "state": states, "sr": np.full(n, 16000, np.int64)}


def _token_ids(word: str, vocab_size: int) -> list[int]:
    """Word-piece-like ids for ``word``: a stable id per word (a hash into the vocabulary above the
    special tokens), long words split into two pieces."""
    lo = 1000 if vocab_size > 2000 else 110
    pieces = [word] if len(word) <= 7 else [word[:5], "##" + word[5:]]
    ids = []
    for p in pieces:
        h = int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little")
        ids.append(lo + h % (vocab_size - lo))
    return ids


def text_inputs(n: int, seed: int = 0, vocab_size: int = 30522, max_len: int = 64) -> dict[str, np.ndarray]:
    """``input_ids`` [n,max_len] int64 ([CLS] sentence [SEP], then [PAD]=0) and ``attention_mask``
    [n,max_len] int64: sentences of varied length from :data:`WORDS` with punctuation and numbers,
    tokenised with BERT's special-token ids."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, max_len), np.int64)
    mask = np.zeros((n, max_len), np.int64)
    for i in range(n):
        words = _phrase(rng, int(rng.integers(3, max(4, max_len // 2)))).lower().split()
        toks = [_SPECIAL["[CLS]"]]
        for w in words:
            toks += _token_ids(w, vocab_size)
            if rng.random() < 0.08:
                toks.append(_token_ids(",", vocab_size)[0])
        toks = toks[: max_len - 2] + [_token_ids(".", vocab_size)[0], _SPECIAL["[SEP]"]]
        ids[i, : len(toks)] = toks
        mask[i, : len(toks)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@dataclass(frozen=True)
class Spec:
    """A zoo model's file or factory and its data: ``inputs(n, seed)`` at full and at test size."""

    name: str
    framework: str  # "onnx" or "torch"
    inputs: Callable[..., dict[str, np.ndarray]]
    full: dict[str, Any]
    small: dict[str, Any]
    factory_kwargs: dict[str, Any] | None = None  # the torch factory's kwargs at test size
    linear: bool = False  # has Linear / MatMul-with-weight layers (pipeline=sparse applies)


SPECS: dict[str, Spec] = {
    "ocr_det": Spec("ocr_det", "onnx", ocr_det_inputs, {"side": 736}, {"side": 96}),
    "ocr_rec": Spec("ocr_rec", "onnx", ocr_rec_inputs, {"width": 320}, {"width": 160}, linear=True),
    "nudenet": Spec("nudenet", "onnx", nudenet_inputs, {"side": 320}, {"side": 128}),
    "silero_vad": Spec("silero_vad", "onnx", silero_inputs, {}, {}),
    "onet": Spec("onet", "torch", face_inputs, {}, {}, {}, linear=True),
    "resnet50": Spec("resnet50", "torch", image_inputs, {"side": 224}, {"side": 64}, {"tiny": True}, linear=True),
    "mobilenet_v2": Spec(
        "mobilenet_v2", "torch", image_inputs, {"side": 224}, {"side": 64}, {"tiny": True}, linear=True
    ),
    "convnext_tiny": Spec(
        "convnext_tiny", "torch", image_inputs, {"side": 224}, {"side": 64}, {"tiny": True}, linear=True
    ),
    "vit_small": Spec(
        "vit_small", "torch", image_inputs, {"side": 224}, {"side": 64}, {"tiny": True, "image_size": 64}, linear=True
    ),
    "distilbert": Spec(
        "distilbert",
        "torch",
        text_inputs,
        {"max_len": 128},
        {"vocab_size": TINY_VOCAB, "max_len": 32},
        {"tiny": True},
        linear=True,
    ),  # fmt: skip
}


def inputs_for(name: str, n: int, seed: int = 0, small: bool = False, **kwargs: Any) -> dict[str, np.ndarray]:
    """``n`` samples of ``name``'s data (``small``: the test size; ``kwargs`` override either)."""
    spec = SPECS[name]
    return spec.inputs(n, seed, **{**(spec.small if small else spec.full), **kwargs})


def write_npz(path: str | os.PathLike[str], inputs: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> Path:
    """Save ``inputs`` (and integer ``labels``) in ``data=npz``'s format; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(inputs)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int64)
    np.savez(path, **arrays)
    return path


def feeds(arrays: Mapping[str, np.ndarray], ranks: Mapping[str, int], n: int | None = None) -> list[dict[str, Any]]:
    """ONNX Runtime feeds for the first ``n`` samples of ``arrays`` (.npz layout) given the model's
    input ranks: one batched feed, or one feed per sample when an array holds whole inputs (one axis
    more than the model's input, see :data:`WHOLE_INPUTS`)."""
    total = len(next(iter(arrays.values())))
    n = total if n is None else min(n, total)
    if not any(np.ndim(a) == ranks[k] + 1 for k, a in arrays.items()):
        return [{k: np.ascontiguousarray(a[:n]) for k, a in arrays.items()}]
    return [
        {k: np.ascontiguousarray(a[i] if np.ndim(a) == ranks[k] + 1 else a[i : i + 1]) for k, a in arrays.items()}
        for i in range(n)
    ]


def input_ranks(path: str | os.PathLike[str]) -> dict[str, int]:
    """The rank of every graph input of an ONNX file (initializers excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return {i.name: len(i.type.tensor_type.shape.dim) for i in model.graph.input if i.name not in inits}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("--cache", default=None, help="folder (default $SLIMKIT_ZOO or ~/.cache/slimkit/zoo)")
    args = parser.parse_args(argv)
    try:
        folder = fetch(args.cache)
    except ZooUnavailable as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    for wheel in WHEELS:
        for name in wheel.members:
            path = folder / name
            print(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB, from {wheel.requirement})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
