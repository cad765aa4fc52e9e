"""VGG-16 with batch norm, CIFAR variant (as in network slimming and the CPMC paper).

Thirteen 3x3 conv-BN-ReLU layers; the last max pool is replaced by global average
pooling, followed by a hidden ``head`` (Linear 512-512, BN1d, ReLU) and the final
``classifier`` Linear. Max pools use ``ceil_mode`` so inputs as small as 8x8 work;
for even feature sizes (e.g. 32x32 CIFAR inputs) this equals the usual floor mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._common import check_sizes, init_weights

__all__ = ["VGG16_CONFIG", "CifarVGG", "vgg16"]

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
"""Conv widths, ``"M"`` for a 2x2 max pool (the final pool is global average pooling)."""


class CifarVGG(nn.Module):
    """VGG with batch norm: ``features``, global ``pool``, ``head`` and ``classifier``.

    Args:
        config: conv widths and ``"M"`` max pools.
        num_classes: outputs of the final Linear layer.
        in_channels: channels of the input images.
    """

    def __init__(
        self,
        config: tuple[int | str, ...] = VGG16_CONFIG,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_sizes(num_classes, in_channels)
        layers: list[nn.Module] = []
        cin = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                cout = int(item)
                layers += [
                    nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(cin, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(512, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.head(x))


def vgg16(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16 with batch norm, CIFAR variant (about 15M parameters)."""
    return CifarVGG(VGG16_CONFIG, num_classes, in_channels)
