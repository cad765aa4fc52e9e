"""OICSR: group lasso over out-in channel groups, and its energy as an importance.

An out-in group is output channel ``i`` of a layer (its filter row, bias, norm
scale and shift) together with input channel ``i`` of every layer that consumes
it; channels that a residual add or concatenation ties together form one group.
Groups come from torch-pruning's ``DependencyGraph``; the formulas from
:mod:`cpmc_plugin.core.proximal`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..core.atomic import prune_atomically
from ..core.proximal import (
    check_finite_nonnegative,
    group_lasso,
    group_lasso_coefficients,
    group_norms,
    group_shrink_factors,
    group_size_weights,
)
from ..torch_pruning.graph import build_graph
from ..torch_pruning.host import DependencyGraph, Group, Importance
from ..torch_pruning.removal import remove_small_groups
from ..torch_pruning.weight_groups import WeightGroups

__all__ = ["OICSRImportance", "OICSRRegularizer"]

ROOT_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
#: what to try when a pruned model no longer runs (shared by the sparse-training removals)
RUN_HINT = (
    "Put the layer whose output channels the failing operation reads (one of those above; "
    "e.g. a channel count hard-coded in a view of the forward) in ignored_layers"
)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def check_ignored_layers(
    model: nn.Module, ignored_layers: Sequence[nn.Module] | None
) -> list[nn.Module]:
    """``ignored_layers`` as a list, or ``ValueError`` if one is not a module of ``model``."""
    ignored = list(ignored_layers) if ignored_layers is not None else []
    known = {id(m) for m in unwrap(model).modules()}
    for layer in ignored:
        if not isinstance(layer, nn.Module) or id(layer) not in known:
            raise ValueError(
                f"ignored_layers must hold modules of the model, got {type(layer).__name__}"
            )
    return ignored


def _warn_unsupported(names: Sequence[str], who: str) -> None:
    if names:
        warnings.warn(
            f"{who}: weights of {', '.join(names)} layers are not in any group "
            "(unsupported layer type); they are neither regularized nor scored",
            stacklevel=3,
        )


class OICSRRegularizer:
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

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        lam: float = 1e-4,
        ignored_layers: Sequence[nn.Module] | None = None,
        scale_by_group_size: bool = True,
    ) -> None:
        self.lam = check_finite_nonnegative("lam", lam)
        if not isinstance(scale_by_group_size, bool):
            raise TypeError(f"scale_by_group_size must be a bool, got {scale_by_group_size!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        ignored = check_ignored_layers(model, ignored_layers)
        self.model = model
        self.example_inputs = example_inputs
        self.ignored_layers = ignored
        self.scale_by_group_size = scale_by_group_size
        self._groups: WeightGroups
        self._weights: torch.Tensor
        self.update()

    # ------------------------------------------------------------------ groups
    def _trace(self) -> DependencyGraph:
        return build_graph(unwrap(self.model), self.example_inputs)

    def _all_groups(self, graph: DependencyGraph) -> list[Group]:
        return list(
            graph.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=ROOT_TYPES)
        )

    def update(self) -> None:
        """Rebuild the groups from the model as it is now (call after pruning it).

        The regularizer also rebuilds by itself when it sees that a weight was
        replaced or reshaped.
        """
        graph = self._trace()
        built = WeightGroups.from_groups(graph, self._all_groups(graph))
        if built.num_groups == 0 or not built.entries:
            raise ValueError(
                "nothing to regularize: the model has no conv/linear output channels outside "
                "ignored_layers that torch-pruning can group"
            )
        _warn_unsupported(built.unsupported, "OICSRRegularizer")
        self._groups = built
        self._weights = group_size_weights(built.sizes, self.scale_by_group_size).to(built.device())

    @torch.no_grad()
    def prune_zero_groups(self, tolerance: float = 0.0) -> int:
        """Remove, through torch-pruning, the channels whose group norm is at most ``tolerance``.

        With the default 0 only groups that :meth:`proximal_step` put at exact zero go,
        so the model computes the same function. Every layer keeps at least one
        channel. Returns the number of channels removed. A model wrapped in
        ``DistributedDataParallel`` must be wrapped again afterwards.

        All or nothing: the pruned model is run on the example inputs; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model is
        put back exactly as it was and a ``ValueError`` names the failing layer.
        """
        limit = check_finite_nonnegative("tolerance", tolerance)

        def prune() -> int:
            graph = self._trace()
            groups = self._all_groups(graph)
            return remove_small_groups(graph, groups, kinds=("out", "in"), limit=limit)

        removed = prune_atomically(
            unwrap(self.model),
            self.example_inputs,
            prune,
            who="OICSRRegularizer.prune_zero_groups",
            hint=RUN_HINT,
        )
        if removed:
            self.update()
        return removed

    def finalize(self) -> None:
        """Nothing to do: :meth:`proximal_step` already leaves exact zeros in the model.

        Part of the interface every sparse-training regularizer shares.
        """

    def _current(self) -> WeightGroups:
        if self._groups.is_stale():
            self.update()
        groups = self._groups
        if self._weights.device != groups.device():
            self._weights = self._weights.to(groups.device())
        return groups

    @property
    def num_groups(self) -> int:
        """Number of out-in groups (channels, with coupled channels counted once)."""
        return self._current().num_groups

    @property
    def group_sizes(self) -> torch.Tensor:
        """Number of weights in every group, ``|g|``."""
        return self._current().sizes.clone()

    @property
    def group_channels(self) -> list[tuple[str, int]]:
        """``(layer name, channel)`` of every group, in the order of the other tensors.

        The layer is the one torch-pruning roots the group at (a producer of the channel).
        """
        return list(self._current().channels)

    @torch.no_grad()
    def group_norms(self) -> torch.Tensor:
        """``||W_g||_2`` of every group, detached."""
        return group_norms(self._current().sq_norms())

    # ------------------------------------------------------------------ training
    def penalty(self) -> torch.Tensor:
        """The group-lasso term ``R(W)`` (without ``lam``), differentiable."""
        groups = self._current()
        return group_lasso(groups.sq_norms(), self._weights)

    def add_penalty(self, loss: torch.Tensor, *_: Any) -> torch.Tensor:
        """``loss + lam * penalty()``; its signature fits NNI's ``evaluator.patch_loss``.

        Example (NNI 3.0): ``evaluator.patch_loss(reg.add_penalty)`` before
        ``evaluator.train(...)`` sparse-trains through an NNI ``TorchEvaluator``.
        """
        return loss + self.lam * self.penalty()

    @torch.no_grad()
    def regularize(self, model: nn.Module | None = None) -> None:
        """Add ``lam * dR/dW`` to the gradients (after ``backward()``, before ``step()``)."""
        if model is not None and unwrap(model) is not unwrap(self.model):
            raise ValueError("regularize() got a different model than the regularizer was built on")
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
        step = check_finite_nonnegative("lr", lr, positive=True)
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
        groups = WeightGroups.from_groups(group._DG, [group], kinds=self.parts)
        _warn_unsupported(groups.unsupported, type(self).__name__)
        if groups.num_groups == 0 or not groups.entries:
            return torch.zeros(len(group[0].idxs))
        return groups.sq_norms().cpu()
