"""Layers whose cost is measured: shape-only copies pruned at a few widths and counted,
with a quadratic in the kept fraction fitted through the counts."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils._pytree import tree_map

from ...core.budget import CostTerm
from ...core.torch_private import BatchNormBase, ConvNd, InstanceNormBase
from .types import CostModel

__all__ = ["OpaqueCall", "measured_terms", "opaque_call_hooks", "opaque_layers"]


@dataclass
class OpaqueCall:
    """The inputs of one call of a layer whose cost is measured."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


_KNOWN_LEAVES = (
    ConvNd,
    nn.Linear,
    BatchNormBase,
    InstanceNormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
    nn.Embedding,
)


def opaque_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Layers of the graph whose MACs and parameters are measured, not scaled by rule.

    A layer with a customized pruner (unless it is a plain conv, linear or norm layer
    without children, which the rules know), or a layer with sub-modules that the
    graph does not trace (``nn.MultiheadAttention`` holds ``out_proj``).
    """
    found = []
    for module in graph.module2node:
        if not isinstance(module, nn.Module):
            continue
        children = [m for m in module.modules() if m is not module]
        customized = type(module) in graph.CUSTOMIZED_PRUNERS or module in graph.CUSTOMIZED_PRUNERS
        if not children and (not customized or isinstance(module, _KNOWN_LEAVES)):
            continue
        if any(m in graph.module2node for m in children):
            continue  # its parts are modelled one by one
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        found.append(module)
    return found


@contextlib.contextmanager
def opaque_call_hooks(layers: Sequence[nn.Module]) -> Iterator[dict[nn.Module, list[OpaqueCall]]]:
    """Record the inputs of every call of ``layers`` during the forwards of the block.

    The dict yielded holds a list per layer; lists stay empty for layers not called.
    """
    calls: dict[nn.Module, list[OpaqueCall]] = {layer: [] for layer in layers}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
        calls[module].append(OpaqueCall(tree_map(detach, args), tree_map(detach, kwargs)))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class _Bound(nn.Module):
    """Calls ``inner`` with fixed keyword arguments (the host's counter passes positional)."""

    def __init__(self, inner: nn.Module, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.kwargs = kwargs

    def forward(self, *args: Any) -> Any:
        return self.inner(*args, **self.kwargs)


def _shrink(value: Any, size: int, kept: int, dim: int | None) -> Any:
    """``value`` with its tensors cut from ``size`` to ``kept`` along ``dim`` (where it fits)."""

    def cut(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or dim is None or t.dim() <= dim:
            return t
        return t.narrow(dim, 0, kept) if t.shape[dim] == size else t

    return tree_map(cut, value)


def _channel_dims(calls: Sequence[OpaqueCall], size: int) -> list[int]:
    """Dimensions of the layer's input tensors that have ``size`` entries (channels first)."""
    dims: list[int] = []
    for call in calls:
        for t in [*call.args, *call.kwargs.values()]:
            if isinstance(t, torch.Tensor):
                dims += [d for d in range(1, t.dim()) if t.shape[d] == size]
                dims += [t.dim() - 1] if t.dim() >= 1 and t.shape[-1] == size else []
    ordered = sorted(set(dims), key=lambda d: (d != 1, -d))
    return ordered


def _measure(
    layer: nn.Module,
    pruner: Any,
    calls: Sequence[OpaqueCall],
    removed_out: int,
    removed_in: int,
    metric: str,
) -> float:
    """The host's count of ``layer`` after its pruner removed channels from a copy of it.

    The copy holds its tensors on the meta device (shapes only) where the layer can run
    there, and real copies otherwise.
    """
    errors: list[BaseException] = []
    for meta in (True, False):
        try:
            twin = _pruned_copy(layer, pruner, removed_out, removed_in, meta)
            if metric == "params":
                return float(sum(p.numel() for p in twin.parameters()))
            return _copy_macs(twin, pruner, pruner.get_in_channels(layer), calls, meta)
        except Exception as error:  # noqa: BLE001 - e.g. an op without a meta kernel
            errors.append(error)
    raise ValueError(
        f"cannot run a pruned copy of {type(layer).__name__} to count it: {errors[-1]}"
    )


def _pruned_copy(
    layer: nn.Module, pruner: Any, removed_out: int, removed_in: int, meta: bool
) -> nn.Module:
    """A copy of ``layer`` (on the meta device with ``meta``) less its first channels."""
    memo: dict[int, Any] = {}
    if meta:
        for p in layer.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to("meta"), p.requires_grad)
        for b in layer.buffers():
            memo[id(b)] = b.detach().to("meta")
    twin = copy.deepcopy(layer, memo)
    if removed_out:
        pruner.prune_out_channels(twin, list(range(removed_out)))
    if removed_in:
        pruner.prune_in_channels(twin, list(range(removed_in)))
    return twin


def _copy_macs(
    twin: nn.Module, pruner: Any, size_in: Any, calls: Sequence[OpaqueCall], meta: bool
) -> float:
    """The host's MACs of the pruned copy ``twin`` over ``calls``, their inputs cut to fit
    (``size_in``: the original layer's input channels, as its pruner reports them)."""
    kept_in = pruner.get_in_channels(twin)
    move = lambda t: t.to("meta") if meta and isinstance(t, torch.Tensor) else t  # noqa: E731
    candidates: list[int | None] = [None]
    if size_in is not None and kept_in is not None and kept_in != size_in:
        candidates = list(_channel_dims(calls, int(size_in)))
    for dim in candidates:  # the first cut the copy accepts is the channel dimension
        total = 0.0
        try:
            for call in calls:
                args = tree_map(move, _shrink(call.args, size_in, kept_in, dim))
                kwargs = tree_map(move, _shrink(call.kwargs, size_in, kept_in, dim))
                bound = _Bound(twin, kwargs)
                _, _, layer_macs, _ = tp.utils.count_ops_and_params(bound, args, layer_wise=True)
                total += float(layer_macs.get(twin) or 0.0)
        except Exception:  # noqa: BLE001 - this cut does not fit the copy: try the next
            continue
        return total
    raise ValueError(f"no cut of the inputs fits a pruned {type(twin).__name__}")


def measured_terms(
    graph: tp.DependencyGraph,
    layer: nn.Module,
    calls: Sequence[OpaqueCall],
    cost: float,
    metric: str,
    model: CostModel,
) -> list[CostTerm]:
    """Cost terms of ``layer`` fitted through counts of pruned copies (empty: not measurable).

    The count is fitted as ``a + b k + c k^2`` in the kept fraction ``k`` of the layer's
    output channels, or, when its input channels are pruned apart from its outputs, as
    the full quadratic in both kept fractions. The fit is scaled to ``cost``, the count
    of the layer in the whole model.
    """
    pruner = graph.get_pruner_of_module(layer)
    size_out = pruner.get_out_channels(layer)
    size_in = pruner.get_in_channels(layer)
    out_dim = model.dim((id(layer), "out"), size_out)
    owned_dims = {d for owned in model.owned for d in owned}
    step_out = _removal_step(model, out_dim)
    if isinstance(layer, nn.MultiheadAttention):  # widths that keep the heads whole
        step_out = math.lcm(step_out, int(layer.num_heads))
    in_dim = None
    if (
        size_in is not None
        and pruner.prune_in_channels != pruner.prune_out_channels
        and model.dim_index.get((id(layer), "in")) in owned_dims
    ):
        in_dim = model.dim_index[(id(layer), "in")]
    if out_dim not in owned_dims and in_dim is None:
        return [CostTerm(cost, ())]  # no group prunes it: its cost stays
    outs = _widths(size_out, step_out) if out_dim in owned_dims else [size_out]
    full_in = int(size_in) if size_in is not None else 1
    points: list[tuple[int, int]] = [(n, full_in) for n in outs]
    ins: list[int] = [full_in]
    if in_dim is not None:
        ins = _widths(full_in, _removal_step(model, in_dim))
        points += [(size_out, n) for n in ins[1:]]
    cross = len(outs) > 1 and len(ins) > 1
    if cross:
        points.append((outs[1], ins[1]))
    try:
        counts = [
            _measure(layer, pruner, calls, size_out - o, full_in - i, metric) for o, i in points
        ]
    except ValueError:
        return []  # left to the rule-based model (and the pruner's check of the result)
    if counts[0] <= 0:
        return []
    ko = torch.tensor([o / size_out for o, _ in points], dtype=torch.float64)
    ki = torch.tensor([i / full_in for _, i in points], dtype=torch.float64)
    basis: list[tuple[torch.Tensor, tuple[int, ...]]] = [(torch.ones_like(ko), ())]
    if len(outs) > 1:
        basis.append((ko, (out_dim,)))
    if len(outs) > 2:
        basis.append((ko * ko, (out_dim, out_dim)))
    if in_dim is not None and len(ins) > 1:
        basis.append((ki, (in_dim,)))
    if in_dim is not None and len(ins) > 2:
        basis.append((ki * ki, (in_dim, in_dim)))
    if in_dim is not None and cross:
        basis.append((ko * ki, (out_dim, in_dim)))
    matrix = torch.stack([column for column, _ in basis], 1)
    values = torch.tensor(counts, dtype=torch.float64)[:, None]
    solution = torch.linalg.lstsq(matrix, values).solution[:, 0]
    scale = cost / counts[0]
    return [
        CostTerm(float(c) * scale, dims)
        for c, (_, dims) in zip(solution, basis, strict=True)
        if abs(float(c)) > 1e-9 * counts[0]
    ]


def _removal_step(model: CostModel, dim: int) -> int:
    """How many indices of ``dim`` one unit of the group that owns it removes."""
    for owned in model.owned:
        counts = owned.get(dim)
        if counts is not None and int(counts.max()) > 0:
            return int(counts.max())
    return 1


def _widths(size: int, step: int) -> list[int]:
    """Up to three widths a layer of ``size`` channels can be pruned to, full width first."""
    widths = [size]
    for fraction in (0.5, 0.25):
        kept = size - step * int((size * (1 - fraction)) // step)
        if 0 < kept < size and kept not in widths:
            widths.append(kept)
    return widths
