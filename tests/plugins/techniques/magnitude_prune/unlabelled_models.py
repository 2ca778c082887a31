"""Small seeded models for the CLI tests of ``magnitude_prune`` on data without labels, importable by name
(the tests put this folder on ``PYTHONPATH``): ``model=torch model.factory=unlabelled_models:tiny_cnn``."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv 3 -> 8, BatchNorm, ReLU, global average pool, linear to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def hf_resnet() -> nn.Module:
    """transformers' ResNet (basic blocks, 16/32 channels, 3-channel images), randomly initialised."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10
    )
    return transformers.ResNetForImageClassification(cfg).eval()
