"""Save a pruned model as weights plus pruning history; reload it with ``weights_only=True``.

A pickled whole model needs ``torch.load(weights_only=False)`` on torch >= 2.6,
which runs code from the file. Instead the file holds only tensors, strings,
booleans and integers: the state dict and torch-pruning's pruning history. To
reload, build the *unpruned* architecture, and :func:`load_pruned` replays the
history through a dependency graph, then loads the weights.

Example:
    >>> import tempfile, os, torch
    >>> from cpmc_plugin import CPMCPruner
    >>> def build():
    ...     return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
    ...                                torch.nn.Conv2d(8, 4, 3))
    >>> x = torch.randn(1, 3, 16, 16)
    >>> net = build()
    >>> pruner = CPMCPruner(net, x, flops_reduction=0.4, ignored_layers=[net[2]])
    >>> pruner.step()
    >>> path = os.path.join(tempfile.mkdtemp(), "pruned.pt")
    >>> save_pruned(net, path, pruner.pruning_history())
    >>> again = load_pruned(build(), path, x)
    >>> torch.equal(again(x), net(x))
    True
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ..attention.eager import eager_attention
from ..attention.shapes import sync_shape_attributes
from ..core.tracing import autograd_on
from .graph.negative_concat import unmap_non_channel_concats

__all__ = ["FORMAT", "load_pruned", "plain_history", "replay_history", "save_pruned"]

FORMAT = "cpmc-plugin/pruned-model/v1"


def plain_history(history: Sequence[Any]) -> list[list[Any]]:
    """``[[name, is_out, [idx, ...]], ...]``: a pruning history as plain, ``weights_only`` data.

    Raises:
        ValueError: an entry is not a ``(name, is_out, idxs)`` triple.
    """
    plain = []
    for entry in history:
        try:
            name, is_out, idxs = entry
        except (TypeError, ValueError):
            raise ValueError(f"not a torch-pruning history entry: {entry!r}") from None
        plain.append([str(name), bool(is_out), [int(i) for i in idxs]])
    return plain


def replay_history(model: nn.Module, history: Sequence[Any], example_inputs: Any) -> None:
    """Prune ``model`` in place as ``history`` (torch-pruning's pruning history) records.

    ``model`` is a fresh, unpruned instance of the architecture the history was recorded
    on; it is traced on ``example_inputs`` and every recorded step is applied in order.
    An empty history leaves the model as it is (and traces nothing). The history itself
    is not changed. Both saved formats, :func:`save_pruned`'s and the ``cpmc-prune``
    checkpoints, are rebuilt through this one function.
    """
    if not history:
        return
    with autograd_on(model), eager_attention(model):  # under a caller's no_grad too
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    unmap_non_channel_concats(graph)
    graph.load_pruning_history(copy.deepcopy(list(history)))
    sync_shape_attributes(model)  # a transformer's hidden_dim, heads and config follow


def save_pruned(
    model: nn.Module, path: str | os.PathLike[str], pruning_history: Sequence[Any]
) -> None:
    """Write ``model``'s weights and the pruning history that shaped it to ``path``."""
    torch.save(
        {
            "format": FORMAT,
            "pruning_history": plain_history(pruning_history),
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    example_inputs: Any,
    *,
    map_location: Any = None,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` from its unpruned architecture.

    ``model`` is a fresh, unpruned instance of the architecture; it is not modified:
    the pruned model is a new object. Loading uses ``torch.load(weights_only=True)``.

    Raises:
        ValueError: the file is not a cpmc-plugin pruned model, or it does not fit ``model``.
    """
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not a readable pruned-model file: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cpmc-plugin pruned model (expected format {FORMAT!r})")
    pruned = copy.deepcopy(model)
    try:
        replay_history(pruned, data["pruning_history"], example_inputs)
        pruned.load_state_dict(data["state_dict"])
    except Exception as error:
        raise ValueError(
            f"{path} does not fit this architecture: {type(error).__name__}: {error}"
        ) from error
    pruned.train(model.training)
    return pruned
