"""Helpers shared by the model definitions: argument checks and weight initialisation."""

from __future__ import annotations

import torch.nn as nn

from ..core.validate import integer

__all__ = ["check_positive_int", "check_sizes", "init_weights"]


def check_positive_int(name: str, value: object) -> int:
    """``value`` if an int >= 1; ``TypeError`` for a non-int (bools too), else ``ValueError``."""
    return integer(name, value, minimum=1)


def check_sizes(num_classes: object, in_channels: object) -> None:
    """Check a model's ``num_classes`` and ``in_channels`` (each an int >= 1)."""
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out, ReLU) for convolutions; batch norms get weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
