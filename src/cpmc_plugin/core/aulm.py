"""AULM's updates (an ADMM-style scheme), on lists of weight tensors.

AULM keeps an auxiliary copy ``Z`` of the weights ``W`` and a scaled multiplier ``U``:
``W`` takes steps on ``loss + rho/2 ||W - Z + U||^2``, then ``Z = prox(W + U)`` and
``U += W - Z``. Host-free (torch only); the proximal map is the caller's.

Example:
    >>> import torch
    >>> w, u = [torch.tensor([3.0, -1.0])], [torch.tensor([1.0, 0.0])]
    >>> z, u = auxiliary_update(w, u, lambda s: [t.clamp(min=0) for t in s])
    >>> z, u                         # Z = max(W + U, 0); U = W + U - Z
    ([tensor([4., 0.])], [tensor([ 0., -1.])])
    >>> residuals(w, z, u)           # W - Z + U
    [tensor([-1., -2.])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["auxiliary_update", "residuals", "weight_step"]


def auxiliary_update(
    weights: Sequence[torch.Tensor],
    u: Sequence[torch.Tensor],
    prox: Callable[[list[torch.Tensor]], list[torch.Tensor]],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(Z, U_next)`` with ``Z = prox(W + U)`` and ``U_next = W + U - Z``.

    Example:
        >>> import torch
        >>> auxiliary_update([torch.tensor([2.0])], [torch.tensor([0.5])], lambda s: s)
        ([tensor([2.5000])], [tensor([0.])])
    """
    shifted = [w + v for w, v in zip(weights, u, strict=True)]
    z = prox(shifted)
    return z, [s - zz for s, zz in zip(shifted, z, strict=True)]


def residuals(
    weights: Sequence[torch.Tensor], z: Sequence[torch.Tensor], u: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``W - Z + U`` per tensor.

    Example:
        >>> import torch
        >>> residuals([torch.tensor([1.0])], [torch.tensor([3.0])], [torch.tensor([0.5])])
        [tensor([-1.5000])]
    """
    return [w - zz + v for w, zz, v in zip(weights, z, u, strict=True)]


@torch.no_grad()
def weight_step(
    weights: Sequence[torch.Tensor],
    z: Sequence[torch.Tensor],
    u: Sequence[torch.Tensor],
    step: float,
) -> None:
    """In place ``W = (W + step (Z - U)) / (1 + step)``: the proximal map of
    ``step/2 ||W - Z + U||^2`` (``step = lr * rho``).

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0])
        >>> weight_step([w], [torch.tensor([4.0])], [torch.tensor([1.0])], 0.5)
        >>> w                            # (1 + 0.5 * 3) / 1.5
        tensor([1.6667])
    """
    for w, zz, v in zip(weights, z, u, strict=True):
        w.add_(step * (zz - v)).div_(1.0 + step)
