"""Networks pruned in the CPMC paper, built by name.

``create_model("resnet56", num_classes=100)`` builds one of the CIFAR models listed by
:func:`list_models`: ``resnet20/32/56/110`` (basic blocks), ``resnet164`` (bottleneck
blocks), ``vgg16`` (with batch norm, CIFAR head) and ``densenet40`` (growth rate 12).
Names are case-insensitive; ``"tv:<name>"`` builds a torchvision model instead.

Every model accepts ``num_classes`` and ``in_channels`` (e.g. 1 for Fashion-MNIST),
takes any input of at least 8x8 pixels (global average pooling), and exposes its
final ``nn.Linear`` as ``model.classifier`` so that it can be kept whole with
``CPMCPruner(model, x, ignored_layers=[model.classifier])``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..core.registry import Registry
from ._common import check_positive_int
from .cifar_resnet import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
    resnet164,
)
from .densenet import DenseNet, densenet40
from .vgg import CifarVGG, vgg16

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "CifarVGG",
    "DenseNet",
    "MODELS",
    "create_model",
    "densenet40",
    "list_models",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet164",
    "vgg16",
]

_TV_PREFIX = "tv:"

#: this package's models by name (case and outer spaces folded)
MODELS: Registry[Callable[..., nn.Module]] = Registry("model", sort=True)
for _builder in (densenet40, resnet20, resnet32, resnet56, resnet110, resnet164, vgg16):
    MODELS.register(_builder.__name__, _builder)
del _builder


def list_models() -> list[str]:
    """Sorted names of this package's models.

    torchvision models are not listed but can be built with the ``"tv:"`` prefix,
    e.g. ``create_model("tv:resnet18", num_classes=10)``.
    """
    return MODELS.names()


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    for name in ("num_classes", "in_channels"):
        if name in kwargs:
            check_positive_int(name, kwargs[name])


def _create_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import torchvision
    except ImportError as error:
        raise ValueError(
            f"model 'tv:{name}' needs torchvision; install it with `pip install torchvision`"
        ) from error
    known = torchvision.models.list_models()
    if name not in known:
        close = [n for n in known if n.startswith(name[:3])][:8] or known[:8]
        raise ValueError(
            f"unknown torchvision model {name!r}; see torchvision.models.list_models() "
            f"(e.g. {', '.join('tv:' + n for n in close)})"
        )
    if kwargs.get("in_channels", 3) != 3:
        raise ValueError(
            f"in_channels must be 3 for torchvision models, got {kwargs['in_channels']!r}"
        )
    kwargs.pop("in_channels", None)
    model: nn.Module = torchvision.models.get_model(name, **kwargs)
    return model


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name (case-insensitive), freshly initialised.

    Args:
        name: one of :func:`list_models`, or ``"tv:<name>"`` for a torchvision model.
        **kwargs: passed to the builder, typically ``num_classes`` (default 10) and
            ``in_channels`` (default 3).

    Raises:
        TypeError: ``name`` is not a str, or ``num_classes`` / ``in_channels`` not an int.
        ValueError: unknown name (the message lists the known ones), torchvision
            missing for a ``"tv:"`` name, or ``num_classes`` / ``in_channels`` below 1.

    Example:
        >>> import torch
        >>> model = create_model("resnet20", num_classes=10)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    _check_kwargs(kwargs)
    key = name.strip().lower()
    if key.startswith(_TV_PREFIX):
        return _create_torchvision(key[len(_TV_PREFIX) :], dict(kwargs))
    builder = MODELS.get(name, hint=" (or 'tv:<name>' for a torchvision model)")
    return builder(**kwargs)
