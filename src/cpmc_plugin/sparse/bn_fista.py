"""L1 on BatchNorm scale and shift, solved with FISTA; zero-scale channels removed exactly.

The end-to-end channel pruning method: ``lam * (||gamma||_1 + ||beta||_1)`` on every
BatchNorm, minimized by FISTA. After the optimizer's gradient step on the loss,
:meth:`BNFISTARegularizer.proximal_step` soft-thresholds the factors with
threshold ``lr * lam`` (:func:`cpmc_plugin.core.proximal.soft_threshold`) and extrapolates
them Nesterov-style, so factors reach *exact* zeros. A channel whose scale is zero
outputs the constant ``beta``; :meth:`BNFISTARegularizer.prune_zero_channels` folds
what that constant adds into the biases of the layers that read it and removes
the channel through torch-pruning: the pruned model computes the same function.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..core import fista, validate
from ..core.layers import unwrap
from ..core.proximal import soft_threshold
from ..core.torch_private import BatchNormBase
from ..torch_pruning.graph.fold import Fold, apply_fold, layer_inputs, plan_folds, readers
from ..torch_pruning.graph.group_stats import is_out_item
from ..torch_pruning.graph.indexing import item_positions, root_lookup
from ..torch_pruning.graph.removal import Removal, apply_removals, removal_of, validated
from ..torch_pruning.host import Group
from ._base import REMOVAL_STACKLEVEL, GroupRegularizer

__all__ = ["BNFISTARegularizer"]


class BNFISTARegularizer(GroupRegularizer):
    """``lam * (||gamma||_1 + ||beta||_1)`` over the model's BatchNorm layers, with FISTA.

    Training loop (the proximal convention every sparse-training regularizer here shares)::

        loss.backward(); optimizer.step(); reg.proximal_step(lr)

    after the last step ``reg.finalize()`` loads the sparse iterate into the model, and
    ``reg.prune_zero_channels(example_inputs)`` removes the channels whose scale is zero.
    ``reg.regularize()`` after ``backward()`` (adds the subgradient ``lam * sign``) and
    ``loss + reg.lam * reg.penalty()`` are the other two conventions; they shrink the
    factors but do not make them exactly zero.

    FISTA keeps the last soft-thresholded iterate ``x_k`` (exactly sparse) and leaves the
    extrapolated point ``y = x_k + m_k * (x_k - x_{k-1})`` in the model for the next
    gradient; ``m_k = (t_k - 1) / t_{k+1}`` with ``t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2``,
    or a fixed ``momentum``.

    Args:
        model: the network (or its ``DistributedDataParallel`` wrapper); needs BatchNorm.
        lam: L1 strength (>= 0).
        scale: penalize the scales ``gamma``.
        shift: penalize the shifts ``beta``.
        momentum: fixed extrapolation coefficient in [0, 1); ``None`` for FISTA's sequence.
        ignored_layers: BatchNorm layers (or modules holding them) left alone.
        example_inputs: inputs :meth:`prune_zeros` runs the model on when it is given none.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        >>> reg = BNFISTARegularizer(net, lam=1.0)
        >>> reg.proximal_step(lr=2.0)      # |gamma| = 1 <= lr * lam: all scales hit zero
        4
        >>> reg.prune_zero_channels(torch.randn(1, 1, 8, 8))  # one channel always stays
        3
        >>> net[0].out_channels
        1
    """

    removal_name: ClassVar[str] = "prune_zero_channels"
    clone_on_removal: ClassVar[bool] = True  # finalize() and the folds change tensors in place
    exact_zeros_only: ClassVar[bool] = True  # a scale is removable only at exactly 0

    def __init__(
        self,
        model: nn.Module,
        *,
        lam: float,
        scale: bool = True,
        shift: bool = True,
        momentum: float | None = None,
        restart: bool = True,
        ignored_layers: Sequence[nn.Module] | None = None,
        example_inputs: Any = None,
    ) -> None:
        self.lam = validate.number("lam", lam, minimum=0)
        self.scale, self.shift = validate.flag("scale", scale), validate.flag("shift", shift)
        validate.flag("restart", restart)
        if not (scale or shift):
            raise ValueError("scale and shift are both False: nothing to regularize")
        if momentum is not None:
            momentum = validate.number("momentum", momentum, minimum=0, maximum=1, high_open=True)
        super().__init__(model, example_inputs, ignored_layers)
        norms = [m for m in unwrap(model).modules() if isinstance(m, BatchNormBase)]
        if not norms:
            raise ValueError(
                "BNFISTARegularizer needs BatchNorm layers; the model has none "
                "(use OICSRRegularizer or SSRRegularizer for models without them)"
            )
        skip = {id(m) for layer in self.ignored_layers for m in layer.modules()}
        norms = [m for m in norms if m.affine and id(m) not in skip]
        if not norms:
            raise ValueError(
                "every BatchNorm of the model is ignored or has affine=False: "
                "there is no scale or shift to regularize"
            )
        self.momentum = momentum
        self._kept_warning: str | None = None  # set by a removal, emitted after it
        self.norms: list[BatchNormBase] = norms
        self._names = [n for n, on in (("weight", scale), ("bias", shift)) if on]
        self.restart = restart
        self._t: dict[tuple[int, str], float] = {}  # FISTA's t_k per tensor
        self._sparse: dict[tuple[int, str], torch.Tensor] = {}  # x_k, the sparse iterate
        self._point: dict[tuple[int, str], torch.Tensor] = {}  # y_k, the extrapolated point

    # ------------------------------------------------------------------ factors
    def _factors(self) -> list[tuple[nn.Module, str, torch.Tensor]]:
        return [(bn, name, getattr(bn, name)) for bn in self.norms for name in self._names]

    def penalty(self) -> torch.Tensor:
        """``||gamma||_1 + ||beta||_1`` over the regularized factors (without ``lam``)."""
        return torch.stack([p.abs().sum() for _, _, p in self._factors()]).sum()

    @torch.no_grad()
    def regularize(self, model: nn.Module | None = None) -> None:
        """Add the subgradient ``lam * sign(x)`` to the factors' gradients (before ``step()``)."""
        self._check_model(model)
        for _, _, p in self._factors():
            if p.requires_grad:
                step = self.lam * p.sign()
                p.grad = step.clone() if p.grad is None else p.grad.add_(step)

    @torch.no_grad()
    def proximal_step(self, lr: float) -> int:
        """One FISTA step after ``optimizer.step()``; returns the channels with zero scale.

        ``x_k = soft_threshold(v, lr * lam)`` of the factors ``v`` the optimizer left,
        then the model gets the extrapolated ``x_k + m_k * (x_k - x_{k-1})``. With
        ``restart``, a tensor whose last extrapolation pointed against its progress
        (``(y_{k-1} - x_k) . (x_k - x_{k-1}) > 0``) starts FISTA's sequence again.
        """
        step = validate.number("lr", lr, minimum=0, low_open=True)
        for bn, name, p in self._factors():
            key = (id(bn), name)
            x = soft_threshold(p.data, step * self.lam)
            previous, point = self._sparse.get(key), self._point.get(key)
            if previous is None or previous.shape != x.shape:  # first step (or pruned since)
                previous, point = x, None
                self._t.pop(key, None)
            coefficient = self._coefficient(key, x, previous.to(x.device), point)
            p.data.copy_(fista.extrapolate(x, previous.to(x.device), coefficient))
            self._sparse[key] = x
            self._point[key] = p.data.clone()
        return self.num_zero_channels

    def _coefficient(
        self,
        key: tuple[int, str],
        x: torch.Tensor,
        previous: torch.Tensor,
        point: torch.Tensor | None,
    ) -> float:
        """``m_k``: fixed ``momentum``, or FISTA's ``(t_k - 1) / t_{k+1}`` (with restarts)."""
        if self.momentum is not None:
            return self.momentum
        t = self._t.get(key, 1.0)
        if (
            self.restart
            and point is not None
            and fista.restart_needed(point.to(x.device), x, previous)
        ):
            t = 1.0
        coefficient, self._t[key] = fista.momentum(t)
        return coefficient

    @torch.no_grad()
    def finalize(self) -> None:
        """Load the last sparse iterate into the model (exact zeros) and restart FISTA."""
        for bn, name, p in self._factors():
            x = self._sparse.get((id(bn), name))
            if x is not None and x.shape == p.shape:
                p.data.copy_(x.to(p.device))
        self._sparse.clear()
        self._point.clear()
        self._t.clear()

    @property
    def num_zero_channels(self) -> int:
        """Channels whose scale is exactly zero in the sparse iterate (the removable ones;
        with ``scale=False``: whose shift is zero)."""
        name = "weight" if self.scale else "bias"
        total = 0
        for bn in self.norms:
            current = getattr(bn, name).detach()
            x = self._sparse.get((id(bn), name))
            total += int(
                ((x if x is not None and x.shape == current.shape else current) == 0).sum()
            )
        return total

    # ------------------------------------------------------------------ pruning
    def prune_zero_channels(self, example_inputs: Any = None) -> int:
        """Remove the channels whose BatchNorm scale is zero; returns how many went.

        Calls :meth:`finalize` first. Such a channel outputs a constant; what it adds to
        each layer reading it is folded into that layer's bias (a Linear, or a conv
        without zero padding; a bias is created when the layer has none). A channel
        whose non-zero constant reaches a zero-padded conv cannot be folded exactly and
        stays (a warning says how many and which layers). Every layer keeps at least one
        channel, and channels that a grouped (not depthwise) conv reads or writes stay.
        A ``DistributedDataParallel`` wrapper must be rebuilt afterwards. The same as
        :meth:`prune_zeros` ``(example_inputs)``; ``example_inputs`` default to those
        given to the constructor.

        All or nothing: the pruned model is run on ``example_inputs``; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model
        and the regularizer are put back exactly as they were before the call and a
        ``ValueError`` names the failing layer.
        """
        return self._prune_zeros(example_inputs, 0.0)

    def _save_state(self) -> Any:
        return dict(self._sparse), dict(self._point), dict(self._t)

    def _restore_state(self, state: Any) -> None:
        self._sparse, self._point, self._t = state
        self._kept_warning = None

    def _remove_zeros(self, inner: nn.Module, example_inputs: Any, limit: float) -> int:
        self.finalize()
        removed, self._kept_warning = self._remove_zero_channels(inner, example_inputs)
        return removed

    def _after_removal(self, removed: int) -> None:
        """Warn about zero-scale channels that had to stay (pointing at the caller)."""
        warning, self._kept_warning = self._kept_warning, None
        if warning:
            warnings.warn(warning, stacklevel=REMOVAL_STACKLEVEL)

    def _remove_zero_channels(
        self, inner: nn.Module, example_inputs: Any
    ) -> tuple[int, str | None]:
        """Fold and remove the zero-scale channels; ``(removed, warning about kept ones)``."""
        graph, groups = self._conv_linear_groups(example_inputs)
        candidates = [(group, self._zero_scale(group)) for group in groups]
        candidates = [(group, zero) for group, zero in candidates if bool(zero.any())]
        consumers = {item.dep.target.module for group, _ in candidates for item in readers(group)}
        inputs = layer_inputs(inner, consumers, example_inputs)
        names = {m: n for n, m in inner.named_modules()}
        plan: list[tuple[Removal, list[Fold]]] = []
        unfoldable = 0
        blockers: set[str] = set()
        for group, zero in candidates:
            folds = plan_folds(group, zero, inputs)
            unfoldable += int((zero & ~folds.foldable).sum())
            blockers.update(names.get(m, "?") for ms in folds.blockers.values() for m in ms)
            removal = removal_of(group, zero & folds.foldable, torch.zeros(len(zero)))
            if removal is not None:
                plan.append((removal, [f for at, f in folds.folds if at in removal.positions]))
        accepted = validated(graph, [removal for removal, _ in plan])
        for removal, folds_of_removal in plan:
            if removal in accepted:
                for fold in folds_of_removal:
                    apply_fold(fold)
        warning = None
        if unfoldable:
            warning = (
                f"{unfoldable} channels with zero BatchNorm scale were kept: their constant "
                "output reaches a zero-padded convolution (or a layer that is not a conv or "
                "linear), where it cannot be folded into a bias exactly; read by "
                f"{', '.join(sorted(blockers))}"
            )
        return apply_removals(graph, accepted), warning

    def _zero_scale(self, group: Group) -> torch.Tensor:
        """Per root channel: every BatchNorm of the group has scale exactly 0 there."""
        size = len(group[0].root_idxs)
        lookup = root_lookup(group)
        zero = torch.ones(size, dtype=torch.bool)
        covered = torch.zeros(size, dtype=torch.bool)
        for item in group:
            bn = item.dep.target.module
            if not isinstance(bn, BatchNormBase) or not is_out_item(group, item.dep.handler):
                continue
            if bn not in self.norms or not self.scale:
                return torch.zeros(size, dtype=torch.bool)
            where = item_positions(lookup, item)
            inside = where >= 0
            at = where[inside]
            idxs = torch.as_tensor(item.idxs, dtype=torch.long).reshape(-1)[inside]
            covered[at] = True
            nonzero = (bn.weight.detach()[idxs] != 0).cpu().long()
            zero &= torch.zeros(size, dtype=torch.long).index_add_(0, at, nonzero) == 0
        return zero & covered
