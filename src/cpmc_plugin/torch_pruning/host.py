"""torch-pruning's types that the other folders name (in annotations and ``isinstance``).

``sparse/``, ``nni/`` and ``cli/`` import these from here, never ``torch_pruning``
itself, so that this folder stays the only one that imports the host.

- ``DependencyGraph``: ``build_dependency``, ``get_all_groups``, ``get_pruning_group``.
- ``Dependency``: one edge of the graph (``dep.target.module``, ``dep.handler``).
- ``Group``: coupled channels; ``group[0]`` is the root item, every item has
  ``idxs`` and ``root_idxs``.
- ``Importance``: ``importance(group)`` gives one score per root channel (or ``None``).
- ``BasePruner``, ``MetaPruner``: the host's pruners.
- the host's own criteria (``GroupMagnitudeImportance``, ``BNScaleImportance``,
  ``LAMPImportance``, ``GroupTaylorImportance``, ``RandomImportance``), which
  :mod:`cpmc_plugin.criteria` offers by name.

Example:
    >>> import torch_pruning as tp
    >>> Group is tp.Group and Importance is tp.importance.Importance
    True
"""

from __future__ import annotations

from torch_pruning import Dependency, DependencyGraph, Group
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
