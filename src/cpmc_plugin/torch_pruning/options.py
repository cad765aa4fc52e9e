"""What ``CPMCPruner`` accepts: the host options it keeps or refuses, the budget, the
per-layer caps, and the layer types its cost model covers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..core.layers import POOLING_TYPES
from ..core.torch_private import ConvNd, NormBase
from ..core.validate import flag, fraction

__all__ = ["HOST_OPTIONS"]


#: host options that keep their meaning under a budget; the others are refused
HOST_OPTIONS = frozenset(
    {
        "customized_pruners",
        "unwrapped_parameters",
        "root_module_types",
        "forward_fn",
        "output_transform",
        "in_channel_groups",
        "out_channel_groups",
        "isomorphic",
        "pruning_ratio_dict",
    }
)


def _resolve_budget(flops: Any, params: Any) -> tuple[str, float]:
    if flops is not None and params is not None:
        raise ValueError(
            "give exactly one of flops_reduction and params_reduction, not both "
            f"(got flops_reduction={flops}, params_reduction={params})"
        )
    if params is not None:
        return "params", fraction("params_reduction", params)
    return "macs", fraction("flops_reduction", 0.5 if flops is None else flops)


_REFUSED = {
    "pruning_ratio": "the budget (flops_reduction or params_reduction) replaces it",
    "ch_sparsity": "the budget (flops_reduction or params_reduction) replaces it",
    "global_pruning": "a budget ranks all channels of the model globally, always",
    "head_pruning_ratio_dict": (
        "the budget decides how many heads each layer loses; head_pruning_ratio caps it"
    ),
}


def _why_refused(names: Sequence[str]) -> str:
    reasons = [f"{n} ({_REFUSED.get(n, 'it has no meaning under a budget')})" for n in names]
    return "; ".join(reasons)


def _layer_caps(ratios: Any) -> dict[nn.Module, float]:
    """``pruning_ratio_dict`` as per-layer caps: ``{module or tuple of modules: ratio}``."""
    if ratios is None:
        return {}
    if not isinstance(ratios, dict):
        raise TypeError(
            f"pruning_ratio_dict must be a dict {{module or tuple of modules: ratio}}, "
            f"got {type(ratios).__name__}"
        )
    caps: dict[nn.Module, float] = {}
    for key, ratio in ratios.items():
        name = f"pruning_ratio_dict[{type(key).__name__}]"
        cap = fraction(name, ratio, zero=True, one=True)  # 0: the layer keeps all its channels
        modules = key if isinstance(key, tuple) else (key,)
        for module in modules:
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"pruning_ratio_dict keys must be modules or tuples of modules, got {module!r}"
                )
            for sub in module.modules():
                caps[sub] = cap
    return caps


def _check_finite(model: nn.Module) -> None:
    # a NaN or Inf makes the sum non-finite; only then look element by element
    bad = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_floating_point()
        and not torch.isfinite(tensor.detach().sum())
        and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"the model has non-finite (NaN or Inf) values in {shown}")


#: layer types whose cost scaling the planner models (the others may make it miss)
_MODELLED: tuple[type, ...] = (
    ConvNd,
    nn.Linear,
    NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Flatten,
    *POOLING_TYPES,
)


@dataclass(frozen=True)
class HeadOptions:
    """The head options of :class:`~cpmc_plugin.CPMCPruner`, validated."""

    num_heads: dict[nn.Module, int] = field(default_factory=dict)
    prune_num_heads: bool = False
    prune_head_dims: bool = False
    cap: float | None = None  # head_pruning_ratio: at most this fraction of a layer's heads
    uniform: tuple[tuple[nn.Module, ...], ...] = ()
    hidden_divisible: bool = False  # keep the hidden width a multiple of the query heads


def _modules(name: str, value: Any) -> tuple[nn.Module, ...]:
    if isinstance(value, nn.Module) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of nn.Module, got {type(value).__name__}")
    for module in value:
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name} must hold nn.Module, got {type(module).__name__}")
    return tuple(value)


def _head_options(
    num_heads: Any,
    prune_num_heads: Any,
    prune_head_dims: Any,
    cap: Any,
    uniform: Any,
    hidden_divisible: Any = False,
) -> HeadOptions:
    heads: dict[nn.Module, int] = {}
    if num_heads is not None:
        if not isinstance(num_heads, Mapping):
            raise TypeError(
                f"num_heads must be a dict {{projection: heads}}, got {type(num_heads).__name__}"
            )
        for module, n in num_heads.items():
            if not isinstance(module, nn.Module):
                raise TypeError(f"num_heads keys must be nn.Module, got {type(module).__name__}")
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"num_heads values must be int, got {type(n).__name__}")
            if n < 1:
                raise ValueError(f"num_heads values must be >= 1, got {n}")
            heads[module] = n
    by_heads = flag("prune_num_heads", bool(heads) if prune_num_heads is None else prune_num_heads)
    by_dims = flag("prune_head_dims", prune_head_dims)
    if by_heads and by_dims:
        raise ValueError(
            "prune_num_heads=True and prune_head_dims=True: under one budget a head goes "
            "whole or its dims shrink, not both; choose one (the default prunes whole heads)"
        )
    if (by_heads or by_dims) and not heads:
        raise ValueError(
            "prune_num_heads or prune_head_dims needs num_heads={projection: heads}; "
            "cpmc_plugin.head_options(model) returns it for the architectures it knows"
        )
    if cap is not None:
        cap = fraction("head_pruning_ratio", cap, zero=True, one=False)
    layers: tuple[tuple[nn.Module, ...], ...] = ()
    if uniform is not None:
        if isinstance(uniform, nn.Module) or not isinstance(uniform, (list, tuple)):
            raise TypeError(
                f"uniform_layers must be a list of lists of layers, got {type(uniform).__name__}"
            )
        layers = tuple(_modules("each entry of uniform_layers", entry) for entry in uniform)
    divisible = flag("hidden_divisible_by_heads", hidden_divisible)
    return HeadOptions(heads, by_heads, by_dims, cap, layers, divisible)
