"""Layer type families the package dispatches on, and ``unwrap`` for DDP models.

Example:
    >>> import torch.nn as nn
    >>> isinstance(nn.Conv2d(1, 2, 3), ROOT_TYPES), isinstance(nn.ReLU(), ROOT_TYPES)
    (True, False)
    >>> net = nn.Linear(2, 2)
    >>> unwrap(nn.DataParallel(net)) is net, unwrap(net) is net
    (True, True)
"""

from __future__ import annotations

import torch.nn as nn

from .torch_private import (
    AdaptiveAvgPoolNd,
    AdaptiveMaxPoolNd,
    AvgPoolNd,
    BatchNormBase,
    ConvNd,
    InstanceNormBase,
    MaxPoolNd,
)

__all__ = [
    "AFFINE_TYPES",
    "CONV_TYPES",
    "NORM_TYPES",
    "POOLING_TYPES",
    "ROOT_TYPES",
    "is_depthwise",
    "unwrap",
]

#: convolutions of any dimension, transposed ones included
CONV_TYPES: tuple[type[nn.Module], ...] = (ConvNd,)

#: layers whose output channels start a pruning group (convolutions of any kind, Linear)
ROOT_TYPES: tuple[type[nn.Module], ...] = (*CONV_TYPES, nn.Linear)

#: per-channel affine layers: their scale and shift go with the channel they act on
AFFINE_TYPES: tuple[type[nn.Module], ...] = (
    BatchNormBase,
    InstanceNormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
)

#: normalisations with one scale per channel (BatchNorm and InstanceNorm, any dimension)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    BatchNormBase,
    InstanceNormBase,
)

#: pooling layers: they keep the channel count and shrink only the spatial size
POOLING_TYPES: tuple[type[nn.Module], ...] = (
    MaxPoolNd,
    AvgPoolNd,
    AdaptiveAvgPoolNd,
    AdaptiveMaxPoolNd,
)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel``, else ``model``."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv as torch-pruning sees one: one conv group per output channel
    (``groups == out_channels > 1``). The host prunes its inputs, outputs and groups
    together, so its cost scales with its outputs alone and it adds no block structure.

    Example:
        >>> is_depthwise(nn.Conv2d(8, 8, 3, groups=8)), is_depthwise(nn.Conv2d(8, 8, 3, groups=2))
        (True, False)
    """
    if not isinstance(module, ConvNd):
        return False
    return module.out_channels > 1 and module.groups == module.out_channels
