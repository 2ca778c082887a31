"""Small seeded models for the CLI tests of ``lowrank``, importable by name (the tests put this folder on
``PYTHONPATH``): ``model=torch model.factory=lowrank_models:mobilenet_v2``."""

from __future__ import annotations

import torch
from torch import nn


def mobilenet_v2() -> nn.Module:
    """transformers' MobileNetV2 (TensorFlow padding, which reads ``stride``, ``kernel_size`` and ``dilation``
    of each convolution at run time), 16x16 RGB images, depth multiplier 0.35, randomly initialised."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.MobileNetV2Config(num_channels=3, image_size=16, depth_multiplier=0.35, num_labels=10)
    return transformers.MobileNetV2ForImageClassification(cfg).eval()
