"""OICSR: group lasso over out-in channel groups, and its energy as an importance.

An out-in group is output channel ``i`` of a layer (its filter row, bias, norm
scale and shift) together with input channel ``i`` of every layer that consumes
it; channels that a residual add or concatenation ties together form one group.
Groups come from torch-pruning's ``DependencyGraph``; the formulas from
:mod:`cpmc_plugin.core.proximal`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..core import validate
from ..core.proximal import (
    group_lasso,
    group_lasso_coefficients,
    group_shrink_factors,
    group_size_weights,
)
from ..torch_pruning.graph.weight_groups import WeightGroups
from ..torch_pruning.host import Group, Importance, graph_of
from ._base import WeightGroupRegularizer, warn_unsupported

__all__ = ["OICSRImportance", "OICSRRegularizer"]

_NOT_USED = "they are neither regularized nor scored"


class OICSRRegularizer(WeightGroupRegularizer):
    """Group lasso ``R(W) = sum_g w_g * ||W_g||_2`` over the out-in channel groups of a model.

    ``w_g = sqrt(|g|)`` (``|g|``: weights in the group) when ``scale_by_group_size``,
    else 1. Three ways to use it in a training loop:

    - ``loss = task_loss + reg.lam * reg.penalty()`` (autograd; ``penalty()`` has no ``lam``);
    - ``reg.regularize(model)`` after ``backward()`` and before ``optimizer.step()``
      (torch-pruning's sparse-training convention): adds ``lam * dR/dW`` to ``.grad``;
    - ``reg.proximal_step(lr)`` after ``optimizer.step()``: group soft-thresholding with
      threshold ``lr * lam * w_g``, which puts whole groups at exact zero.

    A weight shared by two groups (layer ``l+1``'s slice of channel ``i`` also sits in
    one of its own output channels' groups) gets both groups' gradients, and in
    ``proximal_step`` both groups' shrink factors. Groups of zero norm give zero
    gradient, never NaN. The model may be wrapped in ``DistributedDataParallel``.

    Args:
        model: the network (or its DDP wrapper).
        example_inputs: inputs to trace the dependency graph with.
        lam: regularization strength (>= 0).
        ignored_layers: layers whose output channels are not regularized (e.g. the classifier).
        scale_by_group_size: weight each group by ``sqrt(|g|)``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> reg = OICSRRegularizer(net, torch.randn(1, 3, 16, 16), lam=1e-3,
        ...                        ignored_layers=[net[2]])
        >>> reg.num_groups   # the 8 channels between the two convs
        8
        >>> loss = net(torch.randn(2, 3, 16, 16)).square().mean()
        >>> loss.backward()
        >>> reg.regularize(net)
        >>> reg.proximal_step(lr=0.1)
        0
    """

    removal_name: ClassVar[str] = "prune_zero_groups"
    unsupported_effect: ClassVar[str] = _NOT_USED

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        lam: float = 1e-4,
        ignored_layers: Sequence[nn.Module] | None = None,
        scale_by_group_size: bool = True,
    ) -> None:
        self.lam = validate.number("lam", lam, minimum=0)
        self.scale_by_group_size = validate.flag("scale_by_group_size", scale_by_group_size)
        super().__init__(model, example_inputs, ignored_layers)
        self._weights: torch.Tensor
        self.update()

    def update(self) -> None:
        """Rebuild the groups from the model as it is now (call after pruning it).

        The regularizer also rebuilds by itself when it sees that a weight was
        replaced or reshaped.
        """
        built = self._build_groups()
        self._groups = built
        self._weights = group_size_weights(built.sizes, self.scale_by_group_size).to(built.device())

    def prune_zero_groups(self, tolerance: float = 0.0) -> int:
        """Remove, through torch-pruning, the channels whose group norm is at most ``tolerance``.

        With the default 0 only groups that :meth:`proximal_step` put at exact zero go,
        so the model computes the same function. Every layer keeps at least one
        channel. Returns the number of channels removed. A model wrapped in
        ``DistributedDataParallel`` must be wrapped again afterwards. The same as
        :meth:`prune_zeros` ``(tolerance=tolerance)``.

        All or nothing: the pruned model is run on the example inputs; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model is
        put back exactly as it was and a ``ValueError`` names the failing layer.
        """
        return self._prune_zeros(None, tolerance)

    def finalize(self) -> None:
        """Nothing to do: :meth:`proximal_step` already leaves exact zeros in the model.

        Part of the interface every sparse-training regularizer shares.
        """

    def _follow_device(self, device: torch.device) -> None:
        if self._weights.device != device:
            self._weights = self._weights.to(device)

    @property
    def group_sizes(self) -> torch.Tensor:
        """Number of weights in every group, ``|g|``."""
        return self._current().sizes.clone()

    # ------------------------------------------------------------------ training
    def penalty(self) -> torch.Tensor:
        """The group-lasso term ``R(W)`` (without ``lam``), differentiable."""
        groups = self._current()
        return group_lasso(groups.sq_norms(), self._weights)

    @torch.no_grad()
    def regularize(self, model: nn.Module | None = None) -> None:
        """Add ``lam * dR/dW`` to the gradients (after ``backward()``, before ``step()``)."""
        self._check_model(model)
        if self.lam == 0:
            return
        groups = self._current()
        coefficients = self.lam * group_lasso_coefficients(groups.sq_norms(), self._weights)
        groups.add_to_grad(coefficients)

    @torch.no_grad()
    def proximal_step(self, lr: float) -> int:
        """Group soft-thresholding with threshold ``lr * lam * w_g``; returns groups now at zero.

        Call it after ``optimizer.step()`` with the learning rate of that step (plain
        gradient on the loss, then this step, is proximal gradient descent).
        """
        step = validate.number("lr", lr, minimum=0, low_open=True)
        groups = self._current()
        factors = group_shrink_factors(groups.sq_norms(), step * self.lam * self._weights)
        groups.scale(factors)
        return int((groups.sq_norms() == 0).sum())


class OICSRImportance(Importance):
    """OICSR's channel importance: the energy ``||W_g||_2^2`` of each out-in group.

    The energy sums the squared output-channel weights (filter, bias, norm scale
    and shift) and the squared input-channel slices of the consumers, over every
    layer a coupled channel touches. It is the quantity the group lasso of
    :class:`OICSRRegularizer` drives toward zero, so after sparse training the
    scores are comparable across layers: use it with ``global_pruning=True`` in
    ``tp.pruner.MetaPruner`` or as the importance of :class:`~cpmc_plugin.CPMCPruner`.

    Example:
        >>> import torch, torch_pruning as tp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> pruner = tp.pruner.MetaPruner(net, torch.randn(1, 3, 16, 16),
        ...                               importance=OICSRImportance(), pruning_ratio=0.5,
        ...                               global_pruning=True, ignored_layers=[net[2]])
        >>> pruner.step()
        >>> net[0].out_channels
        4
    """

    #: which weights of a group count: producers ("out") and consumers ("in")
    parts: tuple[str, ...] = ("out", "in")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @torch.no_grad()
    def __call__(self, group: Group) -> torch.Tensor:
        groups = WeightGroups.from_groups(graph_of(group), [group], kinds=self.parts)
        warn_unsupported(groups.unsupported, type(self).__name__, _NOT_USED, stacklevel=2)
        if groups.num_groups == 0 or not groups.entries:
            return torch.zeros(len(group[0].idxs))
        return groups.sq_norms().cpu()
