"""Helpers shared by the model definitions: argument checks and weight initialisation."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["check_positive_int", "init_weights"]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int >= 1`` (not a bool); raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


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
