"""What ``CPMCPruner`` accepts: the host options it keeps or refuses, the budget, the
per-layer caps, the head options and the layer types its cost model covers, all
validated eagerly by :func:`read_options` (wrong type: ``TypeError``, wrong value:
``ValueError``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..core.layers import POOLING_TYPES
from ..core.torch_private import ConvNd, NormBase
from ..core.validate import flag, fraction, function, integer, layers_of, optional_integer
from .importance import CPMCImportance

__all__ = [
    "HOST_OPTIONS",
    "MODELLED",
    "HeadOptions",
    "PrunerOptions",
    "check_finite",
    "layer_caps",
    "read_head_options",
    "read_options",
    "resolve_budget",
    "why_refused",
]


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


def resolve_budget(flops: Any, params: Any) -> tuple[str, float]:
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


def why_refused(names: Sequence[str]) -> str:
    reasons = [f"{n} ({_REFUSED.get(n, 'it has no meaning under a budget')})" for n in names]
    return "; ".join(reasons)


def layer_caps(ratios: Any) -> dict[nn.Module, float]:
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


def check_finite(model: nn.Module) -> None:
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
MODELLED: tuple[type, ...] = (
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


def read_head_options(
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


@dataclass(frozen=True)
class PrunerOptions:
    """``CPMCPruner``'s options, validated (see :func:`read_options`)."""

    metric: str
    reduction: float
    importance: Any
    ignored_layers: list[nn.Module] | None
    heads: HeadOptions
    caps: dict[nn.Module, float]
    isomorphic: bool
    host_options: dict[str, Any]


def read_options(
    model: nn.Module,
    example_inputs: Any,
    importance: Any,
    *,
    flops_reduction: Any,
    params_reduction: Any,
    iterative_steps: Any,
    ignored_layers: Sequence[nn.Module] | None,
    output_layers: Sequence[nn.Module] | None,
    max_pruning_ratio: Any,
    round_to: Any,
    finetune_fn: Callable[..., Any] | None,
    calibration_data: Iterable[Any] | None,
    calibration_batches: Any,
    calibration_loss_fn: Callable[..., Any] | None,
    calibration_finetune_steps: Any,
    calibration_progress: Any,
    heads: tuple[Any, ...],
    host_options: dict[str, Any],
) -> PrunerOptions:
    """Validate every option of ``CPMCPruner`` before anything is traced or changed.

    ``heads`` is ``(num_heads, prune_num_heads, prune_head_dims, head_pruning_ratio,
    uniform_layers, hidden_divisible_by_heads)``. ``output_layers`` join
    ``ignored_layers``; the default importance is ``CPMCImportance(example_inputs)``.
    """
    unknown = sorted(set(host_options) - HOST_OPTIONS)
    if unknown:
        raise TypeError(
            f"CPMCPruner does not take {', '.join(unknown)}: "
            + why_refused(unknown)
            + ". Host options it passes on: "
            + ", ".join(sorted(HOST_OPTIONS))
        )
    metric, reduction = resolve_budget(flops_reduction, params_reduction)
    integer("iterative_steps", iterative_steps, minimum=1)
    fraction("max_pruning_ratio", max_pruning_ratio, one=True)
    optional_integer("round_to", round_to, minimum=1)
    integer("calibration_batches", calibration_batches, minimum=2)
    if finetune_fn is not None:
        function("finetune_fn", finetune_fn, call="finetune_fn(model, step)")
    if calibration_loss_fn is not None:
        function("calibration_loss_fn", calibration_loss_fn, call="loss_fn(outputs, targets)")
        if calibration_data is None:
            raise ValueError(
                "calibration_loss_fn scores calibration candidates: give calibration_data too"
            )
    tune_steps = integer("calibration_finetune_steps", calibration_finetune_steps, minimum=0)
    flag("calibration_progress", calibration_progress)
    if tune_steps and calibration_data is None:
        raise ValueError(
            "calibration_finetune_steps fine-tunes calibration candidates: give "
            "calibration_data too"
        )
    head_options = read_head_options(*heads)
    rest = dict(host_options)
    isomorphic = flag("isomorphic", rest.pop("isomorphic", False))
    caps = layer_caps(rest.pop("pruning_ratio_dict", None))
    if importance is None:
        importance = CPMCImportance(example_inputs)
    if not callable(importance):
        raise TypeError(
            f"importance must be a torch-pruning Importance, got {type(importance).__name__}"
        )
    if calibration_data is not None and not isinstance(importance, CPMCImportance):
        raise TypeError(
            "calibration_data chooses CPMCImportance's options, but importance is "
            f"{type(importance).__name__}: pass importance=None or a CPMCImportance"
        )
    check_finite(model)
    ignored = None if ignored_layers is None else list(ignored_layers)
    if ignored_layers is not None or output_layers is not None:
        ignored = layers_of(model, ignored_layers)
        outputs = layers_of(model, output_layers, name="output_layers")
        ignored += [m for m in outputs if all(m is not i for i in ignored)]
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "CPMCPruner cannot prune inside torch.inference_mode(): the weights it "
            "would make there are inference tensors, which no fine-tune can train. "
            "Build the pruner and step outside the block (torch.no_grad() is fine)"
        )
    return PrunerOptions(
        metric, reduction, importance, ignored, head_options, caps, isomorphic, rest
    )
