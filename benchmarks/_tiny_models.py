"""Small CIFAR-style networks (VGG, ResNet, DenseNet families) for quick CPU benchmarks.

Each model takes ``in_channels`` and ``num_classes``, uses BatchNorm after every
convolution, ends in global pooling (so any input size of at least 4x4 works) and
exposes its last ``nn.Linear`` as ``classifier`` (to pass as an ignored layer).

Example:
    >>> import torch
    >>> net = build_model("resnet", in_channels=1, num_classes=10)
    >>> net(torch.randn(2, 1, 16, 16)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FAMILIES", "TinyDenseNet", "TinyResNet", "TinyVGG", "build_model"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class TinyVGG(nn.Module):
    """Plain VGG-style CNN: conv-BN-ReLU stacks with max-pooling, a hidden Linear, a classifier.

    Args:
        in_channels: channels of the input image.
        num_classes: number of output classes.
        widths: conv widths; ``"M"`` inserts a 2x2 max-pool.
        hidden: width of the hidden fully connected layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int | str] = (32, 32, "M", 64, 64, "M", 128, 128),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn_relu(channels, int(width))
                channels = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, hidden)
        self.fc_relu = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.fc_relu(self.fc(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """ResNet-20-style network: 3 stages of basic blocks (widths 16/32/64 by default).

    Args:
        in_channels: channels of the input image.
        num_classes: number of output classes.
        widths: width of each stage; stages after the first halve the resolution.
        blocks: basic blocks per stage.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(BasicBlock(channels, width, stride if block == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = self.stages(F.relu(self.bn1(self.conv1(x))))
        return self.classifier(self.pool(x).flatten(1))


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` new channels, concatenated to its input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``cat([x, conv(relu(bn(x)))])``."""
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then 2x2 average pooling between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compressed, downsampled features."""
        return self.pool(self.conv(F.relu(self.bn(x))))


class TinyDenseNet(nn.Module):
    """DenseNet-style network: dense blocks with concatenation, 1x1 + avg-pool transitions.

    Args:
        in_channels: channels of the input image.
        num_classes: number of output classes.
        growth: channels each dense layer adds.
        layers_per_block: dense layers in each block (one block per entry).
        stem: channels of the first convolution.
        compression: transitions keep this fraction of their input channels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        growth: int = 12,
        layers_per_block: Sequence[int] = (4, 4, 4),
        stem: int = 24,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        modules: list[nn.Module] = []
        channels = stem
        for index, count in enumerate(layers_per_block):
            for _ in range(count):
                modules.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(layers_per_block) - 1:
                out_channels = int(channels * compression)
                modules.append(Transition(channels, out_channels))
                channels = out_channels
        self.features = nn.Sequential(*modules)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.classifier(self.pool(x).flatten(1))


FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "vgg": TinyVGG,
    "resnet": TinyResNet,
    "densenet": TinyDenseNet,
}


def build_model(family: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A fresh model of ``family`` (``"vgg"``, ``"resnet"`` or ``"densenet"``)."""
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}") from None
    return factory(in_channels=in_channels, num_classes=num_classes)
