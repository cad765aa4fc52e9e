"""Counting a model's MACs and parameters with torch-pruning's counter, on a meta twin."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils._pytree import tree_map
from torch_pruning.utils import count_ops_and_params

__all__ = ["_Counts", "_count", "count_ops_and_params"]


@dataclass(frozen=True)
class _Counts:
    macs: float
    params: float
    layer_macs: dict[nn.Module, float]
    layer_params: dict[nn.Module, float]


def _meta_twin(model: nn.Module, example_inputs: Any) -> tuple[nn.Module, Any]:
    """A copy of ``model`` and its inputs on the meta device: shapes only, no data copied."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        twin = tensor.detach().to("meta")
        if isinstance(tensor, nn.Parameter):
            twin = nn.Parameter(twin, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = twin
    inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, example_inputs)
    return copy.deepcopy(model, memo), inputs


def _count(model: nn.Module, example_inputs: Any) -> _Counts:
    """``tp.utils.count_ops_and_params`` of ``model``, layer by layer.

    The host counter deep-copies the model and runs it; running it on a meta-device
    twin gives the same counts without copying weights or computing anything.
    Models that cannot run on the meta device are counted as they are. The count
    runs in eval mode (BatchNorm statistics stay put); the mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        return _count_eval(model, example_inputs)
    finally:
        model.train(was_training)


def _count_eval(model: nn.Module, example_inputs: Any) -> _Counts:
    try:
        twin, inputs = _meta_twin(model, example_inputs)
        macs, params, twin_macs, twin_params = tp.utils.count_ops_and_params(
            twin, inputs, layer_wise=True
        )
        pairs = list(zip(model.modules(), twin.modules(), strict=True))
        layer_macs = {m: twin_macs.get(t) for m, t in pairs}
        layer_params = {m: twin_params.get(t) for m, t in pairs}
    except Exception:
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            model, example_inputs, layer_wise=True
        )
    # per-layer MACs are summed over the batch while the total is per sample; the
    # whole model's entry is that batch sum (the counter also counts some modules that
    # are not leaves, e.g. nn.MultiheadAttention, so a sum over leaves would not do)
    batch_total = float(layer_macs.get(model) or 0.0)
    if batch_total <= 0:
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        batch_total = sum(float(layer_macs.get(m) or 0.0) for m in leaves)
    scale = float(macs) / batch_total if batch_total > 0 else 1.0
    per_sample = {m: float(v or 0.0) * scale for m, v in layer_macs.items()}
    return _Counts(float(macs), float(params), per_sample, dict(layer_params))
