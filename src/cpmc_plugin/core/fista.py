"""FISTA's scalar recursions: the ``t`` sequence, its momentum, and the gradient restart test.

Beck and Teboulle's sequence ``t_1 = 1``, ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2`` gives the
extrapolation coefficient ``m_k = (t_k - 1) / t_{k+1}``; the next point is
``y = x_k + m_k (x_k - x_{k-1})``. O'Donoghue and Candes' gradient restart sets ``t`` back to
1 when the last extrapolation pointed against the progress made. Host-free (torch only).

Example:
    >>> next_t(1.0)                      # (1 + sqrt(5)) / 2
    1.618033988749895
    >>> momentum(1.0)                    # t_1 = 1: no extrapolation yet
    (0.0, 1.618033988749895)
    >>> import torch
    >>> extrapolate(torch.tensor([2.0]), torch.tensor([1.0]), 0.5)
    tensor([2.5000])
"""

from __future__ import annotations

import math

import torch

__all__ = ["extrapolate", "momentum", "next_t", "restart_needed"]


def next_t(t: float) -> float:
    """``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``.

    Example:
        >>> next_t(0.0), round(next_t(next_t(1.0)), 6)
        (1.0, 2.193527)
    """
    return (1.0 + math.sqrt(1.0 + 4.0 * t**2)) / 2.0


def momentum(t: float) -> tuple[float, float]:
    """``(m_k, t_{k+1})`` with ``m_k = (t_k - 1) / t_{k+1}``.

    Example:
        >>> m, t = momentum(next_t(1.0))   # t_2 = 1.618...: m_2 = 0.618... / 2.1935...
        >>> round(m, 6), round(t, 6)
        (0.281754, 2.193527)
    """
    t_next = next_t(t)
    return (t - 1.0) / t_next, t_next


def restart_needed(point: torch.Tensor, x: torch.Tensor, previous: torch.Tensor) -> bool:
    """Gradient restart test: ``(y_{k-1} - x_k) . (x_k - x_{k-1}) > 0``.

    ``point`` is the extrapolated ``y_{k-1}`` the last step left, ``x`` the new iterate
    ``x_k`` and ``previous`` the iterate ``x_{k-1}`` before it.

    Example:
        >>> import torch
        >>> x0, x1 = torch.tensor([0.0]), torch.tensor([1.0])
        >>> restart_needed(torch.tensor([2.0]), x1, x0)   # overshot: (2-1)*(1-0) > 0
        True
        >>> restart_needed(torch.tensor([0.5]), x1, x0)   # (0.5-1)*(1-0) < 0
        False
    """
    return float(((point - x) * (x - previous)).sum()) > 0


def extrapolate(x: torch.Tensor, previous: torch.Tensor, m: float) -> torch.Tensor:
    """``x + m * (x - previous)``: the point FISTA takes the next gradient at.

    Example:
        >>> import torch
        >>> extrapolate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), 0.25)
        tensor([ 1.2500, -0.5000])
    """
    return x + m * (x - previous)
