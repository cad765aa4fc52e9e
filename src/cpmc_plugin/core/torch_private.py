"""The torch names with a leading underscore that the package reads, in one place.

PyTorch has no public name for its layer base classes (``_ConvNd`` covers every
convolution, ``_BatchNorm`` every BatchNorm) nor for a tensor's in-place version
counter, and autograd exposes what a node saved only as ``_saved_*`` attributes.
Every other module imports them from here, so a rename in PyTorch touches one file.

Example:
    >>> import torch, torch.nn as nn
    >>> isinstance(nn.Conv1d(1, 1, 1), ConvNd), isinstance(nn.BatchNorm2d(2), BatchNormBase)
    (True, True)
    >>> t = torch.zeros(2); before = tensor_version(t); _ = t.add_(1)
    >>> tensor_version(t) > before
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "AdaptiveAvgPoolNd",
    "AdaptiveMaxPoolNd",
    "AvgPoolNd",
    "BatchNormBase",
    "ConvNd",
    "DropoutNd",
    "InstanceNormBase",
    "MaxPoolNd",
    "NormBase",
    "saved_dim",
    "saved_input_shape",
    "tensor_version",
]

ConvNd = nn.modules.conv._ConvNd
BatchNormBase = nn.modules.batchnorm._BatchNorm
NormBase = nn.modules.batchnorm._NormBase
InstanceNormBase = nn.modules.instancenorm._InstanceNorm
DropoutNd = nn.modules.dropout._DropoutNd
MaxPoolNd = nn.modules.pooling._MaxPoolNd
AvgPoolNd = nn.modules.pooling._AvgPoolNd
AdaptiveAvgPoolNd = nn.modules.pooling._AdaptiveAvgPoolNd
AdaptiveMaxPoolNd = nn.modules.pooling._AdaptiveMaxPoolNd


def tensor_version(tensor: torch.Tensor) -> int:
    """The tensor's version counter: it grows with every in-place change."""
    return int(tensor._version)


def saved_dim(grad_fn: Any) -> Any:
    """The ``dim`` an autograd node saved (``torch.cat``'s, for one), or ``None``."""
    return getattr(grad_fn, "_saved_dim", None)


def saved_input_shape(grad_fn: Any) -> tuple[int, ...] | None:
    """The shape of the tensor an autograd node produced, or ``None`` if not recorded."""
    metadata: Any = getattr(grad_fn, "_input_metadata", None)
    try:
        return tuple(int(n) for n in metadata[0].shape)
    except (TypeError, IndexError, AttributeError):
        return None
