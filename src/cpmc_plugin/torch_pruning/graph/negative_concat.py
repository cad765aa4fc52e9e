"""Keep torch-pruning from reading a concatenation on a negative dim as a channel concat.

torch reports ``torch.cat(..., dim=-1)`` to autograd as ``_saved_dim == 2**64 - 1``.
torch-pruning 1.6's ``update_concat_index_mapping`` skips a concat that is not along
channels only when its dim is below 100, so such a wrapped dim gets a channel index
mapping. RoPE's ``rotate_half`` (``cat((-x2, x1), dim=-1)`` over ``(B, heads, T, head_dim)``)
is one: inside its diamond of slices, negations and adds every lap through the wrong
mapping shifts the indices, a ``(node, idxs)`` pair never repeats, and the host's
``get_all_groups`` never returns (LLaMA and Qwen2 with grouped-query attention, or with
a KV cache). See ``docs/research/torch-pruning-llm-grouping.md``.

:func:`unmap_non_channel_concats` switches the mapping off, through the host's own
``enable_index_mapping`` flag, for exactly those concats whose inferred segment sizes are
not their inputs' real sizes along the concatenated axis. The host honours the flag
every time it re-derives mappings, so the fix lasts for the life of the graph.
:func:`fixed_graphs` applies it to every graph built inside its block, which is the only
way in before ``tp.pruner.BasePruner.__init__`` asks for its groups.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.nn as nn
import torch_pruning as tp

from ...attention.eager import eager_attention
from ...core.torch_private import saved_dim, saved_input_shape
from ...core.tracing import autograd_on

__all__ = ["fixed_graphs", "unmap_non_channel_concats"]

_WRAPPED = 1 << 63  # torch reports a negative dim d as 2**64 + d


def _shape(node: Any) -> tuple[int, ...] | None:
    return saved_input_shape(getattr(node, "grad_fn", None))


def _misread(node: Any) -> bool:
    """A concat on a negative dim whose host-inferred segment sizes are not its real ones."""
    dim, shape = saved_dim(node.grad_fn), _shape(node)
    if not isinstance(dim, int) or dim < _WRAPPED or shape is None:
        return False  # a positive dim: the host's own rule stands
    axis = dim - (1 << 64) + len(shape)
    sizes = getattr(node.module, "concat_sizes", None)
    parents = [_shape(p) for p in node.inputs]
    if not sizes or len(sizes) != len(parents) or any(s is None for s in sizes):
        return True
    if any(p is None or len(p) != len(shape) for p in parents):
        return False
    return any(int(s) != p[axis] for s, p in zip(sizes, parents, strict=True) if p is not None)


def unmap_non_channel_concats(graph: tp.DependencyGraph) -> int:
    """Switch off the channel mapping of every concat the host misread; how many.

    Only concats along a negative dim whose segment sizes disagree with their inputs'
    shapes are touched (a channels-last concat such as Swin's patch merging keeps its
    mapping: its sizes agree).

    Example:
        >>> import torch
        >>> class Rotate(torch.nn.Module):  # rotate_half over (B, heads, T, head_dim)
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.q, self.o = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        ...     def forward(self, x):
        ...         q = self.q(x).view(1, 3, 2, 4).transpose(1, 2)
        ...         q = q + torch.cat((-q[..., 2:], q[..., :2]), dim=-1)
        ...         return self.o(q.transpose(1, 2).reshape(1, 3, 8))
        >>> net = Rotate()
        >>> graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 3, 8))
        >>> unmap_non_channel_concats(graph)
        1
    """
    fixed = 0
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.CONCAT or not node.enable_index_mapping:
            continue
        if not _misread(node):
            continue
        node.enable_index_mapping = False  # every later update_index_mapping honours it
        for dep in node.dependencies:
            dep.index_mapping[1] = None
        for parent in node.inputs:
            for dep in parent.dependencies:
                if dep.target is node:
                    dep.index_mapping[1] = None
        fixed += 1
    return fixed


@contextlib.contextmanager
def fixed_graphs() -> Iterator[None]:
    """Apply :func:`unmap_non_channel_concats` to every graph built inside the block.

    The host's pruners build their own graph and group it in their constructor, so a
    LLaMA-style model must be handed to ``tp.pruner.MetaPruner`` inside this block
    (``CPMCPruner`` does it by itself). The graph stays fixed after the block. Inside
    it, every trace also runs with autograd on (a caller's ``torch.no_grad()`` or a
    model frozen with ``requires_grad_(False)`` does not stop it) and a Hugging Face
    model traces with eager attention (see :func:`~cpmc_plugin.eager_attention`).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> with fixed_graphs():
        ...     pruner = tp.pruner.MetaPruner(net, torch.randn(1, 4),
        ...                                   tp.importance.MagnitudeImportance(),
        ...                                   ignored_layers=[net[1]])
        >>> tp.DependencyGraph.build_dependency.__name__
        'build_dependency'
    """
    cls = tp.DependencyGraph
    original = cls.build_dependency

    def build_dependency(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = args[0] if args else kwargs.get("model")
        if not isinstance(model, nn.Module):
            return original(self, *args, **kwargs)  # the host's own error
        # the host traces through autograd: a caller's torch.no_grad() or a frozen model
        # must not stop it, and a fused attention kernel would hide grouped-query heads
        with autograd_on(model), eager_attention(model):
            graph = original(self, *args, **kwargs)
        unmap_non_channel_concats(graph)
        return graph

    cls.build_dependency = build_dependency
    try:
        yield
    finally:
        cls.build_dependency = original
