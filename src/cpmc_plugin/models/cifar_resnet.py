"""CIFAR-style ResNets (He et al., 2016): three stages of 16, 32 and 64 channels.

``resnet20/32/56/110`` stack basic blocks (depth ``6n + 2``); ``resnet164`` stacks
bottleneck blocks (depth ``9n + 2``, expansion 4, stage outputs 64/128/256) as pruned
in the CPMC paper. Shape-changing shortcuts are a 1x1 convolution plus batch norm
(option B), which torch-pruning can prune together with the block outputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import check_positive_int, check_sizes, init_weights

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet164",
]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 convolution plus batch norm."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection; outputs ``planes`` channels."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (conv-BN each); outputs ``4 * planes`` channels."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem (3x3 conv 16, BN, ReLU), three stages, global average pool, ``classifier`` Linear.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        blocks_per_stage: number of blocks in each of the three stages.
        num_classes: outputs of the final Linear layer.
        in_channels: channels of the input images.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        check_positive_int("blocks_per_stage", blocks_per_stage)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        cin = 16
        stages: list[nn.Sequential] = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks: list[nn.Module] = []
            for i in range(blocks_per_stage):
                blocks.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _basic(depth: int, num_classes: int, in_channels: int) -> CifarResNet:
    return CifarResNet(BasicBlock, (depth - 2) // 6, num_classes, in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (3 basic blocks per stage, about 0.27M parameters)."""
    return _basic(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (5 basic blocks per stage, about 0.46M parameters)."""
    return _basic(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (9 basic blocks per stage, about 0.85M parameters)."""
    return _basic(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 (18 basic blocks per stage, about 1.7M parameters)."""
    return _basic(110, num_classes, in_channels)


def resnet164(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-164 (18 bottleneck blocks per stage, about 1.7M parameters)."""
    return CifarResNet(Bottleneck, (164 - 2) // 9, num_classes, in_channels)
