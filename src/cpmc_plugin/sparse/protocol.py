"""The interface every sparse-training regularizer implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

__all__ = ["SparseRegularizer"]


@runtime_checkable
class SparseRegularizer(Protocol):
    """What a training loop needs from a sparse-training regularizer.

    ``prune_zeros`` is the one removal entry point: it removes what the regularizer
    drove to zero (all or nothing) and returns how many channels went, whatever the
    method, so a caller need not know which regularizer it holds.
    """

    def penalty(self) -> torch.Tensor: ...

    def add_penalty(self, loss: torch.Tensor, *batch: Any) -> torch.Tensor: ...

    def regularize(self, model: nn.Module | None = None) -> None: ...

    def proximal_step(self, lr: float) -> int: ...

    def finalize(self) -> None: ...

    def prune_zeros(self, example_inputs: Any = None, *, tolerance: float = 0.0) -> int: ...
