"""DenseNet-40 (Huang et al., 2017) for CIFAR: growth rate 12, no bottleneck, no compression.

A 3x3 stem conv with 24 channels, three dense blocks of 12 BN-ReLU-Conv3x3 layers
whose outputs are concatenated onto their inputs, BN-ReLU-Conv1x1-AvgPool2
transitions between blocks, then BN, ReLU, global average pool and the
``classifier`` Linear. torch-pruning follows the concatenations through its
concat index mapping.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import check_sizes, init_weights

__all__ = ["DenseLayer", "DenseNet", "Transition", "densenet40"]


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing ``growth`` channels, concatenated onto the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool2 between dense blocks (same number of channels out)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet without bottlenecks: stem, dense blocks with transitions, ``classifier``.

    Args:
        depth: total depth, ``3 * layers_per_block + 4``.
        growth: channels added by each dense layer.
        num_classes: outputs of the final Linear layer.
        in_channels: channels of the input images.
    """

    def __init__(
        self, depth: int = 40, growth: int = 12, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        if (depth - 4) % 3 or depth < 7:
            raise ValueError(f"depth must be 3 * n + 4 with n >= 1, got {depth}")
        per_block = (depth - 4) // 3
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for b in range(3):
            for _ in range(per_block):
                blocks.append(DenseLayer(channels, growth))
                channels += growth
            if b < 2:
                blocks.append(Transition(channels, channels))
        self.features = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def densenet40(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    """DenseNet-40 with growth rate 12 (about 1.0M parameters)."""
    return DenseNet(40, 12, num_classes, in_channels)
