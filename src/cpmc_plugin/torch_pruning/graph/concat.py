"""Channel index maps through the concatenations torch-pruning leaves unmapped
(:func:`repair_concat_mappings`)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch_pruning as tp

from ...core.torch_private import saved_dim, saved_input_shape
from ..host import HybridIndex

__all__ = ["is_repaired", "repair_concat_mappings"]

#: the concat operations whose mappings this module replaced (each once)
_LIVE_MAPPED: weakref.WeakSet[Any] = weakref.WeakSet()


class _LiveConcatMapping:
    """Index mapping through segment ``index`` of a concatenation, at its current sizes.

    The offsets are read from the concat op's ``concat_sizes`` at every call, which
    torch-pruning's ``ConcatPruner`` keeps current as channels go, so the mapping stays
    right after earlier groups were pruned. ``reverse``: from the concat's output to
    the segment's input (keeps only the indices that fall in the segment).
    """

    def __init__(self, op: Any, index: int, reverse: bool) -> None:
        self.op = op
        self.index = index
        self.reverse = reverse

    def __call__(self, idxs: Sequence[Any]) -> list[Any]:
        sizes = self.op.concat_sizes
        start = int(sum(sizes[: self.index]))
        end = start + int(sizes[self.index])
        hybrid = HybridIndex
        if self.reverse:
            return [hybrid(i.idx - start, i.root_idx) for i in idxs if start <= i.idx < end]
        return [hybrid(i.idx + start, i.root_idx) for i in idxs]


def _output_shape(node: Any) -> tuple[int, ...] | None:
    """The shape of the tensor a graph node produced, read from its autograd node."""
    return saved_input_shape(node.grad_fn)


def repair_concat_mappings(graph: tp.DependencyGraph) -> int:
    """Map channel indices through the concatenations that torch-pruning leaves unmapped.

    The host maps indices through a ``torch.cat`` on dimension 1 only when the channels
    its consumer reads add up to the segments' sum. A concat that is pooled and then
    flattened into a Linear layer fails that check (the Linear reads ``channels * H * W``
    features), so the host leaves the identity mapping in place: channel ``i`` of *every*
    segment is then coupled with output channel ``i``, unrelated channels are pruned
    together, and the pruned model cannot run. Here every such concat whose output
    really has the segments' channels on dimension 1 (checked on the traced tensors)
    gets a mapping that follows the current segment sizes. Idempotent.

    Returns:
        The number of concatenations repaired by this call.
    """
    repaired = 0
    for node in graph.module2node.values():
        op = node.module
        if node.type != tp.ops.OPTYPE.CONCAT or op.offsets is not None:
            continue  # mapped by the host
        if op in _LIVE_MAPPED or not node.enable_index_mapping:
            continue
        shape, dim = _output_shape(node), saved_dim(node.grad_fn)
        if shape is None or len(shape) < 2 or not isinstance(dim, int) or dim % len(shape) != 1:
            continue
        sizes = op.concat_sizes
        if not sizes or len(sizes) != len(node.inputs) or any(s is None for s in sizes):
            continue
        if shape[1] != sum(sizes):
            continue  # concatenated along another dimension than the channels
        pairs = []
        for parent, size in zip(node.inputs, sizes, strict=True):
            parent_shape = _output_shape(parent)
            if parent_shape is not None and (len(parent_shape) < 2 or parent_shape[1] != size):
                break
            backward = [dep for dep in node.dependencies if dep.target == parent]
            forward = [dep for dep in parent.dependencies if dep.target == node]
            if len(backward) != 1 or len(forward) != 1:
                break  # a tensor concatenated twice: its segments cannot be told apart
            pairs.append((backward[0], forward[0]))
        if len(pairs) != len(sizes):
            continue
        for index, (backward, forward) in enumerate(pairs):
            backward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=True)
            forward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=False)
        _LIVE_MAPPED.add(op)
        repaired += 1
    return repaired


def is_repaired(op: Any) -> bool:
    """Whether :func:`repair_concat_mappings` replaced the index maps of concat ``op``."""
    return op in _LIVE_MAPPED
