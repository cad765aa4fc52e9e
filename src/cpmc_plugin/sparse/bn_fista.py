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

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..core.atomic import prune_atomically
from ..core.proximal import check_finite_nonnegative, soft_threshold
from ..torch_pruning.fold import Fold, apply_fold, layer_inputs, plan_folds, readers
from ..torch_pruning.graph import build_graph
from ..torch_pruning.group_stats import is_out_item
from ..torch_pruning.host import Group
from ..torch_pruning.removal import Removal, apply_removals, plan_removal, validated
from .oicsr import ROOT_TYPES, RUN_HINT, check_ignored_layers, unwrap

__all__ = ["BNFISTARegularizer"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class BNFISTARegularizer:
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
    ) -> None:
        self.lam = check_finite_nonnegative("lam", lam)
        self.scale, self.shift = _flag("scale", scale), _flag("shift", shift)
        _flag("restart", restart)
        if not (scale or shift):
            raise ValueError("scale and shift are both False: nothing to regularize")
        if momentum is not None:
            momentum = check_finite_nonnegative("momentum", momentum)
            if momentum >= 1:
                raise ValueError(f"momentum must be in [0, 1) or None, got {momentum}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        inner = unwrap(model)
        norms = [m for m in inner.modules() if isinstance(m, _BatchNorm)]
        if not norms:
            raise ValueError(
                "BNFISTARegularizer needs BatchNorm layers; the model has none "
                "(use OICSRRegularizer or SSRRegularizer for models without them)"
            )
        ignored = check_ignored_layers(model, ignored_layers)
        skip = {id(m) for layer in ignored for m in layer.modules()}
        norms = [m for m in norms if m.affine and id(m) not in skip]
        if not norms:
            raise ValueError(
                "every BatchNorm of the model is ignored or has affine=False: "
                "there is no scale or shift to regularize"
            )
        self.model = model
        self.momentum = momentum
        self.ignored_layers = ignored
        self.norms: list[nn.modules.batchnorm._BatchNorm] = norms
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

    def add_penalty(self, loss: torch.Tensor, *_: Any) -> torch.Tensor:
        """``loss + lam * penalty()``; its signature fits NNI's ``evaluator.patch_loss``."""
        return loss + self.lam * self.penalty()

    @torch.no_grad()
    def regularize(self, model: nn.Module | None = None) -> None:
        """Add the subgradient ``lam * sign(x)`` to the factors' gradients (before ``step()``)."""
        if model is not None and unwrap(model) is not unwrap(self.model):
            raise ValueError("regularize() got a different model than the regularizer was built on")
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
        step = check_finite_nonnegative("lr", lr, positive=True)
        for bn, name, p in self._factors():
            key = (id(bn), name)
            x = soft_threshold(p.data, step * self.lam)
            previous, point = self._sparse.get(key), self._point.get(key)
            if previous is None or previous.shape != x.shape:  # first step (or pruned since)
                previous, point = x, None
                self._t.pop(key, None)
            coefficient = self._coefficient(key, x, previous.to(x.device), point)
            p.data.copy_(x + coefficient * (x - previous.to(x.device)))
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
        if self.restart and point is not None and _against(point.to(x.device), x, previous):
            t = 1.0
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t**2)) / 2.0
        self._t[key] = t_next
        return (t - 1.0) / t_next

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
    @torch.no_grad()
    def prune_zero_channels(self, example_inputs: Any) -> int:
        """Remove the channels whose BatchNorm scale is zero; returns how many went.

        Calls :meth:`finalize` first. Such a channel outputs a constant; what it adds to
        each layer reading it is folded into that layer's bias (a Linear, or a conv
        without zero padding; a bias is created when the layer has none). A channel
        whose non-zero constant reaches a zero-padded conv cannot be folded exactly and
        stays (a warning says how many and which layers). Every layer keeps at least one
        channel, and channels that a grouped (not depthwise) conv reads or writes stay.
        A ``DistributedDataParallel`` wrapper must be rebuilt afterwards.

        All or nothing: the pruned model is run on ``example_inputs``; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model
        and the regularizer are put back exactly as they were before the call and a
        ``ValueError`` names the failing layer.
        """
        inner = unwrap(self.model)
        state = (dict(self._sparse), dict(self._point), dict(self._t))
        kept: list[str] = []

        def prune() -> int:
            self.finalize()
            removed, warning = self._remove_zero_channels(inner, example_inputs)
            kept[:] = [warning] if warning else []
            return removed

        try:
            removed = prune_atomically(
                inner,
                example_inputs,
                prune,
                who="BNFISTARegularizer.prune_zero_channels",
                hint=RUN_HINT,
                clone=True,  # finalize() and the folds change tensors in place
            )
        except BaseException:
            self._sparse, self._point, self._t = state
            raise
        for warning in kept:
            warnings.warn(warning, stacklevel=3)  # past torch.no_grad's wrapper, to the caller
        return removed

    def _remove_zero_channels(
        self, inner: nn.Module, example_inputs: Any
    ) -> tuple[int, str | None]:
        """Fold and remove the zero-scale channels; ``(removed, warning about kept ones)``."""
        graph = build_graph(inner, example_inputs)
        groups = list(
            graph.get_all_groups(ignored_layers=self.ignored_layers, root_module_types=ROOT_TYPES)
        )
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
            removal = plan_removal(group, zero & folds.foldable, torch.zeros(len(zero)))
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
        roots = group[0].root_idxs
        position = {int(r): i for i, r in enumerate(roots)}
        zero = torch.ones(len(roots), dtype=torch.bool)
        covered = torch.zeros(len(roots), dtype=torch.bool)
        for item in group:
            bn = item.dep.target.module
            if not isinstance(bn, _BatchNorm) or not is_out_item(group, item.dep.handler):
                continue
            if bn not in self.norms or not self.scale:
                return torch.zeros(len(roots), dtype=torch.bool)
            for idx, root in zip(item.idxs, item.root_idxs, strict=True):
                if int(root) in position:
                    i = position[int(root)]
                    covered[i] = True
                    zero[i] &= bool(bn.weight[idx] == 0)
        return zero & covered


def _against(point: torch.Tensor, x: torch.Tensor, previous: torch.Tensor) -> bool:
    """O'Donoghue and Candes' gradient restart test: ``(y_{k-1} - x_k) . (x_k - x_{k-1}) > 0``."""
    return float(((point - x) * (x - previous)).sum()) > 0
