"""How many channels a layer's output has, inferred from the module tree (or a trace),
for the auxiliary classifiers' heads."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..core.layers import POOLING_TYPES
from ..core.torch_private import ConvNd, DropoutNd

__all__ = ["Inferred", "infer_channels", "input_hint"]


_CHANNEL_ATTRIBUTES = ("out_channels", "num_features", "out_features", "num_channels")


# Leaf modules whose output has as many channels as their input.
_KEEPS_CHANNELS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    DropoutNd,
    *POOLING_TYPES,
    nn.Upsample,
)


# Functions and tensor methods whose output has as many channels as their first input.
_KEEPS_FUNCTIONS: frozenset[Any] = frozenset(
    {
        F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
        F.hardswish, F.hardsigmoid, F.hardtanh, F.dropout, F.dropout2d,
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
        F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
        torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp,
    }
)  # fmt: skip


_KEEPS_METHODS = frozenset(
    {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "contiguous", "clone"}
)


# Element-wise operations of two tensors of the same channels (a residual add, a gate).
_ELEMENTWISE_FUNCTIONS: frozenset[Any] = frozenset(
    {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, torch.add, torch.mul}
)


_ELEMENTWISE_METHODS = frozenset({"add", "add_", "mul", "mul_", "sub", "sub_"})


@dataclass(frozen=True)
class Inferred:
    """A channel count read from the module tree, and the layer whose attribute gave it."""

    channels: int
    source: str  # its name relative to the model


# A channel count, or the reason why the module tree does not tell it.
_Found = Inferred | str


def _own_channels(module: nn.Module) -> int | None:
    for attribute in _CHANNEL_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sequence_channels(children: list[tuple[str, nn.Module]], prefix: str) -> _Found:
    """The channels that a chain of modules outputs: those of its last child that sets them."""
    for name, child in reversed(children):
        if not isinstance(child, _KEEPS_CHANNELS):
            return _module_channels(child, _join(prefix, name))
    return f"{prefix!r} holds no layer that sets a channel count"


def _traced_channels(module: nn.Module, name: str) -> _Found:
    """Follow the symbolically traced graph of ``module`` back from its output.

    The count is known where the output comes from a layer with a channel attribute,
    through channel-keeping operations, element-wise operations (a residual add: any
    operand that is known) and concatenations along the channels (the sum).
    """
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as error:  # data-dependent control flow, or a forward fx cannot run
        return f"{name!r} cannot be traced symbolically ({type(error).__name__}: {error})"
    memo: dict[torch.fx.Node, _Found] = {}

    def of(value: Any) -> _Found:
        if not isinstance(value, torch.fx.Node):
            return f"{name!r} returns {type(value).__name__}, not one tensor"
        if value not in memo:
            memo[value] = of_node(value)
        return memo[value]

    def broadcast(values: list[Any]) -> _Found:
        """An element-wise result: the operands' channels, where a 1 broadcasts."""
        found = [of(v) for v in values if isinstance(v, torch.fx.Node)]
        wide = [f for f in found if isinstance(f, Inferred) and f.channels != 1]
        if wide:
            counts = sorted({f.channels for f in wide})
            return wide[0] if len(counts) == 1 else f"{name!r} combines {counts} channels"
        unknown = [f for f in found if not isinstance(f, Inferred)]
        if unknown:
            return unknown[0]
        return found[0] if found else f"{name!r} outputs a constant"

    def of_node(node: torch.fx.Node) -> _Found:
        args = list(node.args)
        if node.op == "placeholder":
            return f"the channels {name!r} outputs depend on its input {node.target!r}"
        if node.op == "call_module":
            sub = traced.get_submodule(str(node.target))
            own = _own_channels(sub)
            if own is not None:
                return Inferred(own, _join(name, str(node.target)))
            if isinstance(sub, _KEEPS_CHANNELS) and args:
                return of(args[0])
            return f"{_join(name, str(node.target))!r} ({type(sub).__name__}) has no channel count"
        keeps = node.op == "call_function" and node.target in _KEEPS_FUNCTIONS
        keeps = keeps or (node.op == "call_method" and node.target in _KEEPS_METHODS)
        if keeps and args:
            return of(args[0])
        elementwise = node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS
        if elementwise or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS):
            return broadcast(args)
        if node.op == "call_function" and node.target in (torch.cat, torch.concat) and args:
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
            parts = [of(v) for v in args[0]] if isinstance(args[0], (list, tuple)) else []
            if dim != 1 or not parts:
                return f"{name!r} concatenates along dim {dim}"
            unknown = [part for part in parts if not isinstance(part, Inferred)]
            if unknown:
                return str(unknown[0])
            known = [part for part in parts if isinstance(part, Inferred)]
            return Inferred(sum(part.channels for part in known), known[-1].source)
        target = getattr(node.target, "__name__", node.target)
        return f"{name!r} ends in {target!r}, whose channel count the module tree does not show"

    output = next(node for node in traced.graph.nodes if node.op == "output")
    return of(output.args[0])


def _module_channels(module: nn.Module, name: str) -> _Found:
    """The channels ``module`` outputs, read from the module tree (exact), or why not."""
    own = _own_channels(module)
    if own is not None:
        return Inferred(own, name)
    if isinstance(module, nn.Sequential):
        return _sequence_channels(list(module.named_children()), name)
    if list(module.children()):
        return _traced_channels(module, name)
    return f"{name!r} ({type(module).__name__}) has no channel count"


def infer_channels(modules: dict[str, nn.Module], name: str) -> _Found:
    """The channels module ``name`` outputs; a channel-keeping layer in a ``Sequential``
    (a ReLU, a pooling) outputs what the layers before it output."""
    module = modules[name]
    if not isinstance(module, _KEEPS_CHANNELS):
        return _module_channels(module, name)
    parent_name, _, own = name.rpartition(".")
    parent = modules[parent_name]
    if not isinstance(parent, nn.Sequential):
        return (
            f"{name!r} ({type(module).__name__}) keeps its input's channels, and its input "
            "is not visible in the module tree"
        )
    children = list(parent.named_children())
    position = next(i for i, (child, _) in enumerate(children) if child == own)
    return _sequence_channels(children[: position + 1], parent_name)


def input_hint(model: nn.Module) -> str:
    """``example_inputs=...`` for the model's first conv or Linear layer, as an example."""
    for name, module in model.named_modules():
        if isinstance(module, ConvNd):
            spatial = {1: "L", 2: "H, W", 3: "D, H, W"}.get(len(module.kernel_size), "...")
            return (
                f"example_inputs=torch.randn(1, {module.in_channels}, {spatial}) "
                f"(a batch the model accepts; its first layer {name!r} has "
                f"in_channels={module.in_channels})"
            )
        if isinstance(module, nn.Linear):
            return (
                f"example_inputs=torch.randn(1, {module.in_features}) "
                f"(a batch the model accepts; its first layer {name!r} has "
                f"in_features={module.in_features})"
            )
    return "example_inputs= (a batch of inputs the model accepts)"
