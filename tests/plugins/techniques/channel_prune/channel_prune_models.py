"""Small seeded models for the ``channel_prune`` structure tests, importable by name (conftest.py puts this
folder on ``sys.path``; the CLI tests put it on ``PYTHONPATH``): ``model=torch
model.factory=channel_prune_models:resnet``.

Transformers' image classifiers take the 8x8 one-channel digits (``data.size=8``), DistilBERT the token
splits of ``tests/plugins/techniques/conftest.py``; every model is randomly initialised from a config (no
hub) with a fixed seed, few layers and channels, so that pruning one takes a second.
"""

from __future__ import annotations

import torch
from torch import nn


def _transformers():  # type: ignore[no-untyped-def]
    import transformers

    return transformers


def resnet() -> nn.Module:
    """transformers' ResNet (basic blocks), 16/32 channels."""
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10
    )
    return tf.ResNetForImageClassification(cfg).eval()


def mobilenet_v2() -> nn.Module:
    """transformers' MobileNetV2 at depth multiplier 0.1 (inverted residuals, depthwise convolutions)."""
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.MobileNetV2Config(
        num_channels=1, image_size=8, depth_multiplier=0.1, finegrained_output=False, num_labels=10
    )
    return tf.MobileNetV2ForImageClassification(cfg).eval()


def convnext() -> nn.Module:
    """transformers' ConvNeXt: depthwise 7x7 convolutions, LayerNorm over channels, layer scale."""
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.ConvNextConfig(
        num_channels=1, patch_size=2, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10
    )
    return tf.ConvNextForImageClassification(cfg).eval()


def vit() -> nn.Module:
    """transformers' ViT: 4 patches of 4x4, 2 layers of 4 heads, hidden 16, FFN 32."""
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=10,
    )
    return tf.ViTForImageClassification(cfg).eval()


def distilbert() -> nn.Module:
    """transformers' DistilBERT: 2 layers of 4 heads, dim 32, FFN 64, 3 labels."""
    tf = _transformers()
    torch.manual_seed(0)
    cfg = tf.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32, num_labels=3
    )
    return tf.DistilBertForSequenceClassification(cfg).eval()


class HeadsAttention(nn.Module):
    """Self-attention with a fused qkv projection: a layout head pruning does not know."""

    def __init__(self, dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class RowTransformer(nn.Module):
    """The rows of an 8x8 image as 8 tokens: embedding, one attention block, an optional FFN, classifier."""

    def __init__(self, ffn: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attention = HeadsAttention()
        self.ffn = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)) if ffn else nn.Identity()
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(len(x), 8, 8))
        x = x + self.attention(x)
        x = x + self.ffn(x)
        return self.head(x.mean(1))


def row_transformer(ffn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return RowTransformer(ffn).eval()


class ThreeHeads(nn.Module):
    """A face-detector-like CNN (MTCNN's ONet in small): box regression (4), landmarks (10) and a face
    probability (2, softmax) from one trunk."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 32),
            nn.ReLU(),
        )
        self.box = nn.Linear(32, 4)
        self.landmarks = nn.Linear(32, 10)
        self.face = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.box(h), self.landmarks(h), torch.softmax(self.face(h), -1)


def three_heads(seed: int = 0, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return ThreeHeads(width).eval()


def local_class() -> nn.Module:
    """A model whose class is defined inside this function: it cannot be pickled."""

    class Local(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return Local().eval()
