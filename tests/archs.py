"""Small networks covering the architectures CPMC must handle (fast on a CPU)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyVGG(nn.Module):
    """Plain conv stack with a hidden Linear layer (VGG-style classifier head)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32),
            conv_bn(32, 32),
            nn.MaxPool2d(2),
            conv_bn(32, 64),
            conv_bn(64, 64),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Linear(64 * 4 * 4, 64)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 4).flatten(1)
        return self.classifier(F.relu(self.hidden(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, cout, 3, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            conv_bn(cin, width, 1),
            conv_bn(width, width, 3, stride),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out += self.shortcut(x)
        return self.relu(out)


class TinyResNet(nn.Module):
    """CIFAR-style ResNet with basic or bottleneck blocks (residual adds tie channels)."""

    def __init__(self, bottleneck: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        blocks: list[nn.Module] = []
        cin = 16
        for width, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2)):
            if bottleneck:
                blocks.append(Bottleneck(cin, width // 2, stride))
                cin = width * 2
            else:
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], dim=1)


class TinyDenseNet(nn.Module):
    """DenseNet-style: each layer's output is concatenated into every later input."""

    def __init__(self, growth: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)]
        channels = 2 * growth
        for block in range(2):
            for _ in range(4):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block == 0:
                layers += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_res else self.body(x)


class TinyMobileNetV2(nn.Module):
    """MobileNetV2-style: depthwise convs inside inverted residuals."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 1),
            InvertedResidual(16, 16, 1),
            InvertedResidual(16, 24, 2),
            InvertedResidual(24, 24, 1),
            InvertedResidual(24, 32, 2),
            conv_bn(32, 128, 1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class TinyGroupedNet(nn.Module):
    """Grouped (non-depthwise) convolution, as in ResNeXt."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 32),
            conv_bn(32, 64, 3, 2, groups=4),
            conv_bn(64, 64, 3, 1, groups=4),
            conv_bn(64, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 32

    def example(self) -> torch.Tensor:
        return torch.randn(2, 3, self.input_size, self.input_size)


ARCHS = [
    Arch("vgg", TinyVGG),
    Arch("resnet-basic", TinyResNet),
    Arch("resnet-bottleneck", lambda: TinyResNet(bottleneck=True)),
    Arch("densenet", TinyDenseNet),
    Arch("mobilenetv2", TinyMobileNetV2),
    Arch("grouped", TinyGroupedNet),
]


def build(arch: Arch, seed: int = 0) -> nn.Module:
    """The architecture with seeded, non-trivial weights and BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = arch.build()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(module.weight, 0.2, 1.0)
            nn.init.uniform_(module.bias, -0.2, 0.2)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def classifier_of(model: nn.Module) -> nn.Module:
    return model.classifier  # type: ignore[return-value]
