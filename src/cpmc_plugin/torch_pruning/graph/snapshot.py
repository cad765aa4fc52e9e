"""One snapshot of a prune: the model's modules and tensors and the graph's own state.

:func:`prune_snapshot` is a :class:`~cpmc_plugin.core.atomic.ModelSnapshot` of the
graph's model that also holds a :class:`GraphState`, so that restoring it undoes a
prune completely (a calibration candidate, a corrected plan, a refused step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch.nn as nn
import torch_pruning as tp

from ...core.atomic import ModelSnapshot
from ..host import GraphHistory

__all__ = ["GraphState", "prune_snapshot"]


def _operation_state(module: nn.Module) -> dict[str, Any]:
    """The plain values (sizes, offsets, shapes, slice bounds) a torch-pruning operation
    node keeps about the tensors it joins or cuts, copied."""
    return {
        name: copy.deepcopy(value)
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, list | tuple | int | float | None)
    }


class GraphState:
    """What pruning a group changes in the graph itself, to put back with the model.

    ``group.prune()`` appends to the graph's pruning history, re-keys the graph's
    parameter maps to the new object of an unwrapped ``nn.Parameter``, and rewrites the
    state of the graph's operation nodes (``tp.ops``: a concatenation's
    ``concat_sizes``, a split's ``split_sizes``, an output's ``shape``, a slice's
    bounds), some of it in place. Restoring a
    :class:`~cpmc_plugin.core.atomic.ModelSnapshot` puts the old objects back in the
    model; :meth:`restore` puts all of that back too, so a restored prune leaves no
    trace (a calibration candidate, a corrected plan, a refused step), and the next
    prune maps channels through the concatenations as the first one did.
    """

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.graph = graph
        self.history = GraphHistory(graph)
        self.module2node = dict(graph.module2node)
        self.node_modules = [(node, node.module) for node in graph.module2node.values()]
        self.operations = [
            (module, _operation_state(module))
            for module in graph.module2node
            if type(module).__module__ == tp.ops.__name__
        ]

    def restore(self) -> None:
        """Put the history, the parameter names, the node map and the operation nodes'
        state back as they were."""
        graph = self.graph
        self.history.restore()
        graph.module2node = dict(self.module2node)
        for node, module in self.node_modules:
            node.module = module
        for module, state in self.operations:
            for name, value in state.items():  # a copy again: pruning edits lists in place
                setattr(module, name, copy.deepcopy(value))


def prune_snapshot(
    graph: tp.DependencyGraph,
    *,
    clone: bool = False,
    clone_buffers: bool = False,
    after_restore: Callable[[], None] | None = None,
) -> ModelSnapshot:
    """A snapshot of the graph's model and of the graph: ``restore()`` undoes a prune.

    ``clone`` and ``clone_buffers`` are :class:`~cpmc_plugin.core.atomic.ModelSnapshot`'s;
    ``after_restore`` is called after every restore (state derived from the shapes,
    such as tied weights or a shared config).
    """
    return ModelSnapshot(
        graph.model,
        clone=clone,
        clone_buffers=clone_buffers,
        parts=(GraphState(graph),),
        after_restore=after_restore,
    )
