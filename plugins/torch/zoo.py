"""Bundled models trained on the digits data: ``digits_cnn`` (8x8 input) and ``digits_resnet``.

``digits_resnet`` is a CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem, three stages of
``blocks`` basic blocks at ``width``, 2x``width`` and 4x``width`` channels, global average pooling and
a linear classifier. The defaults (``width=16, blocks=3``) are ResNet-20. Trained weights ship in
``weights/``; ``python -m slimkit.plugins.torch.train`` reproduces them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core import ModelError

WEIGHTS_DIR = Path(__file__).parent / "weights"

#: name -> (factory kwargs that the shipped weights were trained with, data size)
BUNDLED: dict[str, dict[str, Any]] = {
    "digits_cnn": {"kwargs": {}, "size": 8},
    "digits_resnet": {"kwargs": {"width": 16, "blocks": 3}, "size": 32},
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet for 1x32x32 inputs."""

    def __init__(self, width: int = 16, blocks: int = 3, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            cout = width * mult
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, stride=2 if (stage > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class DigitsCNN(nn.Module):
    """A small CNN for the original 1x8x8 digits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _load_bundled(model: nn.Module, name: str) -> nn.Module:
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.exists():
        raise ModelError(
            f"bundled weights {path} are missing; reinstall slimkit or run "
            f"'python -m slimkit.plugins.torch.train {name}'"
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def digits_resnet(pretrained: bool = True, width: int = 16, blocks: int = 3, num_classes: int = 10) -> nn.Module:
    """ResNet-20-style digits classifier (32x32 input); ``pretrained`` loads the shipped weights."""
    model = DigitsResNet(width=width, blocks=blocks, num_classes=num_classes)
    if pretrained:
        if {"width": width, "blocks": blocks} != BUNDLED["digits_resnet"]["kwargs"] or num_classes != 10:
            raise ModelError(
                f"no bundled weights for digits_resnet(width={width}, blocks={blocks}); "
                "use pretrained=false and train it, or the defaults width=16 blocks=3"
            )
        _load_bundled(model, "digits_resnet")
    return model


def digits_cnn(pretrained: bool = True, num_classes: int = 10) -> nn.Module:
    """Small CNN digits classifier (8x8 input); ``pretrained`` loads the shipped weights."""
    model = DigitsCNN(num_classes=num_classes)
    if pretrained:
        _load_bundled(model, "digits_cnn")
    return model
