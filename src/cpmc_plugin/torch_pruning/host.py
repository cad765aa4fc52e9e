"""torch-pruning's types that the other folders name (in annotations and ``isinstance``),
and the only module that reads the host's private state (:func:`graph_of`,
:func:`module_name`, :class:`GraphHistory`): torch-pruning offers no public accessor
for it, so a change in the host touches this file alone.

``sparse/``, ``nni/`` and ``cli/`` import these from here, never ``torch_pruning``
itself, so that this folder stays the only one that imports the host.

- ``DependencyGraph``: ``build_dependency``, ``get_all_groups``, ``get_pruning_group``.
- ``Dependency``: one edge of the graph (``dep.target.module``, ``dep.handler``).
- ``Group``: coupled channels; ``group[0]`` is the root item, every item has
  ``idxs`` and ``root_idxs``.
- ``Importance``: ``importance(group)`` gives one score per root channel (or ``None``).
- ``BasePruner``, ``MetaPruner``: the host's pruners.
- ``HybridIndex``: a channel index with its root index, as the host's index maps return it.
- the host's own criteria (``GroupMagnitudeImportance``, ``BNScaleImportance``,
  ``LAMPImportance``, ``GroupTaylorImportance``, ``RandomImportance``), which
  :mod:`cpmc_plugin.criteria` offers by name.

Example:
    >>> import torch_pruning as tp
    >>> Group is tp.Group and Importance is tp.importance.Importance
    True
"""

from __future__ import annotations

from typing import Any

from torch_pruning import Dependency, DependencyGraph, Group
from torch_pruning._helpers import _HybridIndex
from torch_pruning.pruner import BasePruner, MetaPruner
from torch_pruning.pruner.importance import (
    BNScaleImportance,
    GroupMagnitudeImportance,
    GroupTaylorImportance,
    Importance,
    LAMPImportance,
    RandomImportance,
)

__all__ = [
    "BNScaleImportance",
    "GraphHistory",
    "HybridIndex",
    "graph_of",
    "module_name",
    "BasePruner",
    "Dependency",
    "DependencyGraph",
    "Group",
    "GroupMagnitudeImportance",
    "GroupTaylorImportance",
    "Importance",
    "LAMPImportance",
    "MetaPruner",
    "RandomImportance",
]

#: the host's channel index type (an index and its root index)
HybridIndex = _HybridIndex


def graph_of(group: Group) -> DependencyGraph:
    """The graph a group was read from (the host keeps it on the group, privately)."""
    return group._DG


def module_name(graph: DependencyGraph, module: Any, default: str = "?") -> str:
    """The qualified name of ``module`` in the graph's model, as the graph recorded it
    when it was built (``default`` for a module it does not know)."""
    name = graph._module2name.get(module)
    return default if name is None else str(name)


class GraphHistory:
    """The graph's own bookkeeping that ``group.prune()`` changes: its pruning history and
    the names of unwrapped parameters (re-keyed to a pruned parameter's new object).

    :meth:`restore` puts both back as they were when this was made.
    """

    def __init__(self, graph: DependencyGraph) -> None:
        self.graph = graph
        self.history = list(graph._pruning_history)
        self.param_to_name = dict(graph._param_to_name)

    def restore(self) -> None:
        """Put the history and the parameter names back."""
        self.graph._pruning_history = list(self.history)
        self.graph._param_to_name = dict(self.param_to_name)
