"""What the sparse-training regularizers share: checks, the model guard, the penalty, removal.

:class:`GroupRegularizer` owns the plumbing of the family (OICSR, SSR, BN-FISTA): the
model and ``ignored_layers`` checks, the wrong-model guard of ``regularize``,
``add_penalty``, tracing the model into its conv/linear groups, and the one removal
entry point :meth:`GroupRegularizer.prune_zeros` (all or nothing). A regularizer
fills in :meth:`~GroupRegularizer.penalty`, ``penalty_weight`` and
:meth:`~GroupRegularizer._remove_zeros`. :class:`WeightGroupRegularizer` adds the
weight-group queries OICSR and SSR have in common.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..core import validate
from ..core.atomic import prune_atomically
from ..core.layers import ROOT_TYPES, unwrap
from ..core.proximal import group_norms
from ..torch_pruning.graph.build import build_graph
from ..torch_pruning.graph.removal import remove_small_groups
from ..torch_pruning.graph.weight_groups import WeightGroups
from ..torch_pruning.host import DependencyGraph, Group

__all__ = [
    "REMOVAL_STACKLEVEL",
    "RUN_HINT",
    "GroupRegularizer",
    "WeightGroupRegularizer",
    "warn_unsupported",
]

#: what to try when a pruned model no longer runs (shared by the sparse-training removals)
RUN_HINT = (
    "Put the layer whose output channels the failing operation reads (one of those above; "
    "e.g. a channel count hard-coded in a view of the forward) in ignored_layers"
)

#: frames from ``warnings.warn`` in a removal hook up to the caller of the public method:
#: the hook, ``_prune_zeros``, the public method (``prune_zeros`` or a legacy name), caller
REMOVAL_STACKLEVEL = 4


def warn_unsupported(names: Sequence[str], who: str, effect: str, stacklevel: int = 3) -> None:
    """Warn that layers of types ``names`` are in no group (``effect``: what that means)."""
    if names:
        warnings.warn(
            f"{who}: weights of {', '.join(names)} layers are not in any group "
            f"(unsupported layer type); {effect}",
            stacklevel=stacklevel + 1,
        )


class GroupRegularizer:
    """The shared part of a sparse-training regularizer over a model's channels.

    Args:
        model: the network (or its ``DistributedDataParallel`` wrapper).
        example_inputs: inputs to trace the model with (``None``: give them to
            :meth:`prune_zeros`).
        ignored_layers: modules of ``model`` left alone.

    Raises:
        TypeError: ``model`` is not a module, or ``ignored_layers`` holds a non-module.
        ValueError: ``ignored_layers`` holds a module of another model.
    """

    #: the removal method's name in error texts (the legacy public name)
    removal_name: ClassVar[str] = "prune_zeros"
    #: removal changes tensors in place (bias folds): the snapshot must copy them
    clone_on_removal: ClassVar[bool] = False
    #: only exact zeros can go (``tolerance`` must be 0)
    exact_zeros_only: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ignored_layers: Sequence[nn.Module] | None,
    ) -> None:
        validate.module("model", model)
        self.ignored_layers: list[nn.Module] = validate.layers_of(model, ignored_layers)
        self.model = model
        self.example_inputs = example_inputs

    # ------------------------------------------------------------------ training
    #: the strength; :attr:`penalty_weight` unless a regularizer weights its penalty otherwise
    lam: float

    @property
    def penalty_weight(self) -> float:
        """What :meth:`add_penalty` multiplies :meth:`penalty` by: ``lam`` (SSR: ``rho``)."""
        return self.lam

    def penalty(self) -> torch.Tensor:
        """The regularization term without its weight, differentiable."""
        raise NotImplementedError

    def add_penalty(self, loss: torch.Tensor, *_: Any) -> torch.Tensor:
        """``loss + penalty_weight * penalty()``; its signature fits NNI's
        ``evaluator.patch_loss``.

        Example (NNI 3.0): ``evaluator.patch_loss(reg.add_penalty)`` before
        ``evaluator.train(...)`` sparse-trains through an NNI ``TorchEvaluator``.
        """
        return loss + self.penalty_weight * self.penalty()

    def _check_model(self, model: nn.Module | None) -> None:
        """``ValueError`` when ``regularize`` gets another model than the one built on."""
        if model is not None and unwrap(model) is not unwrap(self.model):
            raise ValueError("regularize() got a different model than the regularizer was built on")

    # ------------------------------------------------------------------ groups
    def _conv_linear_groups(
        self, example_inputs: Any = None
    ) -> tuple[DependencyGraph, list[Group]]:
        """Trace the model (on ``example_inputs``, default the stored ones) and its groups
        rooted at conv/linear layers outside ``ignored_layers``."""
        inputs = self.example_inputs if example_inputs is None else example_inputs
        graph = build_graph(unwrap(self.model), inputs)
        groups = graph.get_all_groups(
            ignored_layers=self.ignored_layers, root_module_types=ROOT_TYPES
        )
        return graph, list(groups)

    # ------------------------------------------------------------------ removal
    def prune_zeros(self, example_inputs: Any = None, *, tolerance: float = 0.0) -> int:
        """Remove the channels the regularizer drove to zero; returns how many went.

        The one removal entry point of the family: a group (OICSR, SSR) or a BatchNorm
        scale (BN-FISTA) at most ``tolerance`` goes. ``example_inputs`` default to the
        ones the regularizer was built with. Every layer keeps at least one channel.

        All or nothing: the pruned model is run on the example inputs; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model
        and the regularizer are put back exactly as they were and a ``ValueError`` names
        the failing layer.
        """
        return self._prune_zeros(example_inputs, tolerance)

    def _prune_zeros(self, example_inputs: Any, tolerance: float) -> int:
        """The body of :meth:`prune_zeros`, called directly by every public name (so that
        a warning of a hook is :data:`REMOVAL_STACKLEVEL` frames from the caller)."""
        limit = validate.number("tolerance", tolerance, minimum=0)
        inputs = self.example_inputs if example_inputs is None else example_inputs
        who = f"{type(self).__name__}.{self.removal_name}"
        if self.exact_zeros_only and limit != 0:
            raise ValueError(
                f"{who} removes only channels that are exactly 0: tolerance must be 0, "
                f"got {tolerance!r}"
            )
        if inputs is None:
            raise ValueError(f"{who} needs example_inputs: the regularizer was built without them")
        inner = unwrap(self.model)
        saved = self._save_state()
        with torch.no_grad():
            try:
                removed = prune_atomically(
                    inner,
                    inputs,
                    lambda: self._remove_zeros(inner, inputs, limit),
                    who=who,
                    hint=RUN_HINT,
                    clone=self.clone_on_removal,
                )
            except BaseException:
                self._restore_state(saved)
                raise
            self._after_removal(removed)
        return removed

    def _remove_zeros(self, inner: nn.Module, example_inputs: Any, limit: float) -> int:
        """Remove what is at most ``limit`` from ``inner`` (in place); how many channels."""
        raise NotImplementedError

    def _save_state(self) -> Any:
        """The regularizer's own state, to put back when a removal is undone."""
        return None

    def _restore_state(self, state: Any) -> None:
        """Put back what :meth:`_save_state` returned."""

    def _after_removal(self, removed: int) -> None:
        """After a removal that held: rebuild when channels went."""
        if removed:
            self.update()

    def update(self) -> None:
        """Rebuild what the regularizer derived from the model (after pruning it)."""


class WeightGroupRegularizer(GroupRegularizer):
    """A :class:`GroupRegularizer` over :class:`WeightGroups` (OICSR's and SSR's groups)."""

    #: which weights of a group it holds: producers ("out") and consumers ("in")
    kinds: ClassVar[tuple[str, ...]] = ("out", "in")
    #: what an unsupported layer means, for the warning
    unsupported_effect: ClassVar[str] = "they are not regularized"

    _groups: WeightGroups

    def _build_groups(self) -> WeightGroups:
        """Trace the model into :class:`WeightGroups`; ``ValueError`` when there are none."""
        graph, groups = self._conv_linear_groups()
        built = WeightGroups.from_groups(graph, groups, kinds=self.kinds)
        if built.num_groups == 0 or not built.entries:
            raise ValueError(
                "nothing to regularize: the model has no conv/linear output channels outside "
                "ignored_layers that torch-pruning can group"
            )
        warn_unsupported(built.unsupported, type(self).__name__, self.unsupported_effect)
        return built

    def _remove_zeros(self, inner: nn.Module, example_inputs: Any, limit: float) -> int:
        graph, groups = self._conv_linear_groups(example_inputs)
        return remove_small_groups(graph, groups, kinds=self.kinds, limit=limit)

    def _follow_device(self, device: torch.device) -> None:
        """Move the regularizer's own tensors to ``device`` (the model moved)."""

    def _current(self) -> WeightGroups:
        """The groups, rebuilt when a weight was replaced or reshaped, on the model's device."""
        if self._groups.is_stale():
            self.update()
        self._follow_device(self._groups.device())
        return self._groups

    @property
    def num_groups(self) -> int:
        """Number of groups (channels, with coupled channels counted once)."""
        return self._current().num_groups

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
