"""SSR: structured sparsity on filter groups, solved with AULM (an ADMM-style scheme).

A *filter group* is everything that produces one channel: the filter rows of the
conv/linear layers a residual add or concatenation ties together, their biases and
the scale and shift of the norms after them. Groups come from torch-pruning's
``DependencyGraph``; unlike OICSR's out-in groups they do not overlap, so the
proximal maps act group by group (formulas in :mod:`cpmc_plugin.core.proximal`):

- ``kind="l21"``: ``lam * sum_g w_g ||W_g||_2`` (group lasso), prox = group soft-thresholding;
- ``kind="l20"``: at most ``keep`` non-zero groups, prox = keep the ``keep`` largest.

AULM keeps an auxiliary copy ``Z`` of the grouped weights and a scaled multiplier
``U`` and alternates: (a) SGD on ``loss + rho/2 ||W - Z + U||^2``; (b) ``Z = prox(W + U)``;
(c) ``U += W - Z``; (b) and (c) every ``update_every`` training steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn

from ..core import aulm, validate
from ..core.proximal import group_shrink_factors, group_size_weights, top_k_factors
from ..torch_pruning.graph.weight_groups import WeightGroups
from ._base import WeightGroupRegularizer
from .oicsr import OICSRImportance

__all__ = ["SSRImportance", "SSRRegularizer"]

_KINDS = ("l21", "l20")
_OUT = ("out",)


class SSRRegularizer(WeightGroupRegularizer):
    """Filter-group sparsity (L2,1 or L2,0) with the AULM solver.

    Training loop (the proximal convention every sparse-training regularizer here shares)::

        loss.backward(); optimizer.step(); reg.proximal_step(lr)

    ``proximal_step(lr)`` applies the proximal map of ``lr * rho/2 ||W - Z + U||^2`` (the
    exact form of a gradient step on that term) and, every ``update_every`` calls, the
    ``Z`` and ``U`` updates. The torch-pruning convention ``reg.regularize()`` after
    ``backward()`` (adds ``rho (W - Z + U)`` to the gradients, and updates ``Z``/``U`` on
    the same schedule) works as well. When training ends, ``reg.finalize()`` zeroes the
    groups whose ``Z`` is zero, and ``reg.prune_zero_groups()`` removes them.

    Args:
        model: the network (or its ``DistributedDataParallel`` wrapper).
        example_inputs: inputs to trace the dependency graph with.
        rho: penalty parameter of the augmented term (> 0).
        kind: ``"l21"`` (group lasso) or ``"l20"`` (keep the ``keep`` largest groups).
        keep: for ``"l20"``: a number of groups in ``[1, num_groups]``, or a fraction in (0, 1].
        lam: for ``"l21"``: the group-lasso strength (>= 0, default 1e-4); the threshold
            of ``Z``'s update is ``lam * w_g / rho``.
        update_every: training steps between two ``Z``/``U`` updates (>= 1).
        ignored_layers: layers whose output channels are not regularized (e.g. the classifier).
        scale_by_group_size: weight each group by ``w_g = sqrt(|g|)`` (``"l21"``).

    Every dependency group (a layer, or layers tied together) keeps at least one
    non-zero channel in ``Z`` (its largest, unshrunk), so for ``"l20"`` slightly more
    than ``keep`` can survive. Channels that a grouped (not depthwise) conv reads or
    writes are not removed by :meth:`prune_zero_groups`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
        ...                           torch.nn.Conv2d(8, 4, 3))
        >>> reg = SSRRegularizer(net, torch.randn(1, 3, 16, 16), rho=1e-2, kind="l20",
        ...                      keep=3, ignored_layers=[net[2]])
        >>> reg.num_groups, reg.num_zero_groups
        (8, 5)
        >>> reg.finalize()
        >>> reg.prune_zero_groups()
        5
        >>> net[0].out_channels
        3
    """

    removal_name: ClassVar[str] = "prune_zero_groups"
    kinds: ClassVar[tuple[str, ...]] = _OUT

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        rho: float,
        kind: Literal["l21", "l20"] = "l21",
        keep: int | float | None = None,
        lam: float | None = None,
        update_every: int = 1,
        ignored_layers: Sequence[nn.Module] | None = None,
        scale_by_group_size: bool = True,
    ) -> None:
        self.rho = validate.number("rho", rho, minimum=0, low_open=True)
        self.kind = validate.one_of("kind", kind, _KINDS)
        if kind == "l21" and keep is not None:
            raise ValueError("keep is for kind='l20'; kind='l21' takes lam")
        if kind == "l20" and lam is not None:
            raise ValueError("lam is for kind='l21'; kind='l20' takes keep")
        if kind == "l20" and keep is None:
            raise ValueError("kind='l20' needs keep: a number of groups or a fraction in (0, 1]")
        self.lam = validate.number("lam", 1e-4 if lam is None else lam, minimum=0)
        self.update_every = validate.integer("update_every", update_every, minimum=1)
        self.scale_by_group_size = validate.flag("scale_by_group_size", scale_by_group_size)
        super().__init__(model, example_inputs, ignored_layers)
        groups = self._build_groups()
        self._keep_spec = keep
        self._check_keep(groups.num_groups)  # before any state: bad input changes nothing
        self._calls = 0
        self._reset(groups)

    # ------------------------------------------------------------------ groups
    def _check_keep(self, num_groups: int) -> int:
        keep = self._keep_spec
        if self.kind != "l20":
            return num_groups
        if isinstance(keep, bool) or not isinstance(keep, (int, float)):
            raise TypeError(f"keep must be an integer or a fraction in (0, 1], got {keep!r}")
        if isinstance(keep, float):
            if not 0 < keep <= 1:
                raise ValueError(f"keep as a fraction must be in (0, 1], got {keep}")
            return max(1, round(keep * num_groups))
        if not 1 <= keep <= num_groups:
            raise ValueError(
                f"keep must be between 1 and the number of groups ({num_groups}), got {keep}"
            )
        return keep

    def _reset(self, groups: WeightGroups) -> None:
        self._groups = groups
        self._weights = group_size_weights(groups.sizes, self.scale_by_group_size).to(
            groups.device()
        )
        self.keep = self._check_keep(groups.num_groups) if self.kind == "l20" else None
        weights = [e.tensor.detach() for e in groups.entries]
        self._u = [torch.zeros_like(w) for w in weights]
        self._set_z(groups, groups.scaled(weights, self._prox(groups.sq_norms(weights))))

    def _set_z(self, groups: WeightGroups, z: list[torch.Tensor]) -> None:
        """Store ``Z`` and which of its groups are non-zero (read every step, changed rarely)."""
        self._z = z
        self._z_alive = groups.sq_norms(z) > 0

    def update(self) -> None:
        """Rebuild the groups from the model as it is now and restart ``Z = prox(W)``, ``U = 0``.

        Runs by itself when a weight was replaced or reshaped (the model was pruned).
        A ``keep`` count larger than the groups left is lowered to their number.
        """
        groups = self._build_groups()
        if self.kind == "l20" and isinstance(self._keep_spec, int):
            self._keep_spec = min(self._keep_spec, groups.num_groups)
        self._reset(groups)

    def _follow_device(self, device: torch.device) -> None:
        if self._z and self._z[0].device != device:  # the model moved
            self._z = [z.to(device) for z in self._z]
            self._u = [u.to(device) for u in self._u]
            self._z_alive = self._z_alive.to(device)
            self._weights = self._weights.to(device)

    @property
    @torch.no_grad()
    def num_zero_groups(self) -> int:
        """Groups at exact zero in ``Z``."""
        self._current()
        return int((~self._z_alive).sum())

    # ------------------------------------------------------------------ AULM
    def _prox(self, sq_norms: torch.Tensor) -> torch.Tensor:
        """Per-group factors of the proximal map of ``R / rho`` at norms ``sqrt(sq_norms)``.

        Where it would zero every channel of a dependency group, the largest one keeps
        factor 1, so no layer is cut off.
        """
        if self.kind == "l21":
            factors = group_shrink_factors(sq_norms, self.lam * self._weights / self.rho)
        else:
            assert self.keep is not None
            factors = top_k_factors(sq_norms, min(self.keep, len(sq_norms)))
        for segment in self._groups.segments():
            if not bool(factors[segment].any()):
                factors[segment.start + int(sq_norms[segment].argmax())] = 1.0
        return factors

    def _residuals(self, groups: WeightGroups) -> list[torch.Tensor]:
        """``W - Z + U`` per weight tensor."""
        return aulm.residuals([e.tensor for e in groups.entries], self._z, self._u)

    def penalty(self) -> torch.Tensor:
        """``1/2 ||W - Z + U||^2`` (without ``rho``), differentiable in ``W``."""
        return 0.5 * torch.stack([r.pow(2).sum() for r in self._residuals(self._current())]).sum()

    @property
    def penalty_weight(self) -> float:
        """``rho``: :meth:`add_penalty` gives ``loss + rho * penalty()``.

        In that convention call :meth:`update_auxiliary` on your own schedule.
        """
        return self.rho

    @torch.no_grad()
    def update_auxiliary(self) -> int:
        """``Z = prox(W + U)``, ``U += W - Z``; returns the groups at zero in ``Z``."""
        groups = self._current()
        weights = [e.tensor.detach() for e in groups.entries]
        z, self._u = aulm.auxiliary_update(
            weights,
            self._u,
            lambda shifted: groups.scaled(shifted, self._prox(groups.sq_norms(shifted))),
        )
        self._set_z(groups, z)
        return int((~self._z_alive).sum())

    def _tick(self) -> None:
        self._calls += 1
        if self._calls % self.update_every == 0:
            self.update_auxiliary()

    @torch.no_grad()
    def regularize(self, model: nn.Module | None = None) -> None:
        """Add ``rho (W - Z + U)`` to the gradients (after ``backward()``, before ``step()``)."""
        self._check_model(model)
        groups = self._current()
        for entry, residual in zip(groups.entries, self._residuals(groups), strict=True):
            tensor = entry.tensor
            if tensor.requires_grad:
                step = self.rho * residual
                tensor.grad = step.clone() if tensor.grad is None else tensor.grad.add_(step)
        self._tick()

    @torch.no_grad()
    def proximal_step(self, lr: float) -> int:
        """``W = (W + lr rho (Z - U)) / (1 + lr rho)`` after ``optimizer.step()``; then the
        scheduled ``Z``/``U`` update. Returns the groups at zero in ``Z``."""
        step = validate.number("lr", lr, minimum=0, low_open=True) * self.rho
        groups = self._current()
        aulm.weight_step([e.tensor.data for e in groups.entries], self._z, self._u, step)
        self._tick()
        return self.num_zero_groups

    @torch.no_grad()
    def finalize(self) -> None:
        """Zero the model's groups whose ``Z`` is zero (exact zeros; other weights kept)."""
        groups = self._current()
        groups.scale(self._z_alive.to(torch.float32))

    def prune_zero_groups(self) -> int:
        """Remove, through torch-pruning, the channels whose filter group is exactly zero.

        Such a channel outputs zero (its filters, bias, norm scale and shift are zero), so
        the model computes the same function. Every layer keeps at least one channel.
        Returns the number of channels removed; ``Z`` and ``U`` restart afterwards. The
        same as :meth:`prune_zeros` ``()``.

        All or nothing: the pruned model is run on the example inputs; if that fails (a
        channel count hard-coded in the forward) or its output shapes change, the model is
        put back exactly as it was and a ``ValueError`` names the failing layer.
        """
        return self._prune_zeros(None, 0.0)


class SSRImportance(OICSRImportance):
    """The energy ``||W_g||_2^2`` of each filter group: what :class:`SSRRegularizer` drives to 0.

    Only the weights that produce a channel count (filters, biases, norm scale and
    shift), not the slices of the layers that read it. Use it like
    :class:`~cpmc_plugin.OICSRImportance` (``global_pruning=True`` in
    ``tp.pruner.MetaPruner``, or as the importance of :class:`~cpmc_plugin.CPMCPruner`).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Conv2d(2, 2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1., 0, 0], [3., 0, 0]]).view(2, 3, 1, 1))
        ...     _ = net[0].bias.copy_(torch.tensor([0., 4.]))
        >>> from cpmc_plugin.torch_pruning.graph.build import build_graph
        >>> graph = build_graph(net, torch.randn(1, 3, 4, 4))
        >>> SSRImportance()(graph.get_pruning_group(net[0], graph.get_pruner_of_module(
        ...     net[0]).prune_out_channels, [0, 1]))      # 1^2 + 0^2, 3^2 + 4^2
        tensor([ 1., 25.])
    """

    parts = _OUT
