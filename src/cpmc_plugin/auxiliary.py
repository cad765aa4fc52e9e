"""Auxiliary classifiers on shallow and intermediate layers, for sparse training.

The end-to-end BN pruning method trains small classifiers on intermediate features
next to the network's own, so that shallow layers stay discriminative while their
channels are being sparsified. :func:`attach_auxiliary_classifiers` wraps a model
without touching its module tree (forward hooks read the features; the heads live in
the wrapper); :meth:`AuxiliaryClassifiers.detach` removes the hooks and gives the
plain model back.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ._probe import forward_once
from .proximal import check_finite_nonnegative

__all__ = ["AuxiliaryClassifiers", "attach_auxiliary_classifiers", "combined_loss"]


class _Head(nn.Module):
    """Global average pooling over the spatial dimensions, then a Linear classifier."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() > 2:
            features = features.flatten(2).mean(-1)
        return self.fc(features)


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
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
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
class _Inferred:
    """A channel count read from the module tree, and the layer whose attribute gave it."""

    channels: int
    source: str  # its name relative to the model


# A channel count, or the reason why the module tree does not tell it.
_Found = _Inferred | str


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
        wide = [f for f in found if isinstance(f, _Inferred) and f.channels != 1]
        if wide:
            counts = sorted({f.channels for f in wide})
            return wide[0] if len(counts) == 1 else f"{name!r} combines {counts} channels"
        unknown = [f for f in found if not isinstance(f, _Inferred)]
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
                return _Inferred(own, _join(name, str(node.target)))
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
            unknown = [part for part in parts if not isinstance(part, _Inferred)]
            if unknown:
                return str(unknown[0])
            known = [part for part in parts if isinstance(part, _Inferred)]
            return _Inferred(sum(part.channels for part in known), known[-1].source)
        target = getattr(node.target, "__name__", node.target)
        return f"{name!r} ends in {target!r}, whose channel count the module tree does not show"

    output = next(node for node in traced.graph.nodes if node.op == "output")
    return of(output.args[0])


def _module_channels(module: nn.Module, name: str) -> _Found:
    """The channels ``module`` outputs, read from the module tree (exact), or why not."""
    own = _own_channels(module)
    if own is not None:
        return _Inferred(own, name)
    if isinstance(module, nn.Sequential):
        return _sequence_channels(list(module.named_children()), name)
    if list(module.children()):
        return _traced_channels(module, name)
    return f"{name!r} ({type(module).__name__}) has no channel count"


def _infer_channels(modules: dict[str, nn.Module], name: str) -> _Found:
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


def _input_hint(model: nn.Module) -> str:
    """``example_inputs=...`` for the model's first conv or Linear layer, as an example."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
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


class AuxiliaryClassifiers(nn.Module):
    """A model plus classifiers on the outputs of some of its layers.

    ``forward`` returns ``(logits, [aux_logits, ...])`` (one per name in ``at``, in
    order). Train with :func:`combined_loss`; call :meth:`detach` afterwards.
    """

    def __init__(
        self, model: nn.Module, at: Sequence[str], num_classes: int, example_inputs: Any = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if isinstance(at, str) or not isinstance(at, Sequence) or not at:
            raise ValueError(f"at must be a non-empty list of module names, got {at!r}")
        modules = dict(model.named_modules())
        unknown = [name for name in at if name not in modules or name == ""]
        if unknown:
            known = [name for name in modules if name][:8]
            raise ValueError(
                f"at names modules the model does not have: {unknown}; "
                f"its modules are named like {known}"
            )
        if len(set(at)) != len(at):
            raise ValueError(f"at names a module twice: {list(at)}")
        if example_inputs is not None:
            measured = self._probe(model, at, example_inputs)
            sources = {name: f"a forward pass on example_inputs: {measured[name]}" for name in at}
            channels = measured
        else:
            channels, sources = {}, {}
            for name in at:
                found = _infer_channels(modules, name)
                if not isinstance(found, _Inferred):
                    raise ValueError(
                        f"cannot tell how many channels {name!r} ({type(modules[name]).__name__}) "
                        f"outputs: {found}; pass {_input_hint(model)}"
                    )
                channels[name] = found.channels
                sources[name] = f"{found.source!r}: {found.channels}"
        super().__init__()
        self.model = model
        self.at = tuple(at)
        parameter = next(model.parameters(), None)
        self.heads = nn.ModuleList(_Head(channels[name], num_classes) for name in at)
        self._channels = dict(channels)
        self._sources = sources
        if parameter is not None:
            self.heads.to(device=parameter.device, dtype=parameter.dtype)
        self._features: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[name].register_forward_hook(self._recorder(name)) for name in self.at
        ]

    @staticmethod
    def _probe(model: nn.Module, at: Sequence[str], example_inputs: Any) -> dict[str, int]:
        modules = dict(model.named_modules())
        found: dict[str, int] = {}

        def hook(name: str) -> Callable[..., None]:
            def record(_: nn.Module, __: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.dim() >= 2:
                    found[name] = int(output.shape[1])

            return record

        handles = [modules[name].register_forward_hook(hook(name)) for name in at]
        try:
            forward_once(model, example_inputs)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in at if name not in found]
        if missing:
            raise ValueError(
                f"{missing} gave no tensor output of shape [N, C, ...] on example_inputs"
            )
        return found

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(_: nn.Module, __: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self._features[name] = output

        return record

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
        if not self._handles:
            raise RuntimeError("the auxiliary classifiers were detached")
        self._features = {}
        try:
            logits = self.model(*args, **kwargs)
            missing = [name for name in self.at if name not in self._features]
            if missing:
                raise RuntimeError(f"{missing} did not run (or gave no tensor) in this forward")
            for name in self.at:
                self._check_channels(name, self._features[name])
            heads = zip(self.at, self.heads, strict=True)
            aux = [head(self._features[name]) for name, head in heads]
        finally:
            self._features = {}
        return logits, aux

    def _check_channels(self, name: str, features: torch.Tensor) -> None:
        """A clear error where a layer's output no longer fits its head (a pruned model)."""
        if features.dim() == 0:
            return
        got = int(features.shape[1]) if features.dim() >= 2 else int(features.shape[0])
        expected = self._channels[name]
        if got != expected:
            raise ValueError(
                f"the auxiliary classifier on {name!r} was built for {expected} "
                f"channels (read from {self._sources[name]}), but {name!r} outputs {got}; "
                f"attach it again with {_input_hint(self.model)}, so the count is measured"
            )

    def detach(self) -> nn.Module:
        """Remove the hooks and return the wrapped model, exactly as it was attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.model


def attach_auxiliary_classifiers(
    model: nn.Module, at: Sequence[str], num_classes: int, *, example_inputs: Any = None
) -> AuxiliaryClassifiers:
    """Wrap ``model`` with a classifier (average pool + Linear) on each layer named in ``at``.

    The channel count of each named layer is measured by a forward pass when
    ``example_inputs`` is given. Otherwise it is read from the module tree: the layer's
    ``out_channels`` / ``num_features`` / ``out_features``; for a ``Sequential`` (such as
    a ResNet stage) its last channel-setting child; for a ReLU or pooling inside a
    ``Sequential`` the layers before it; for any other module (a residual block) the
    layer its symbolically traced output comes from (through activations, residual
    adds and channel concatenations). Where the tree does not tell, a ``ValueError``
    says why and what ``example_inputs`` to pass.

    The heads are new parameters of the wrapper: give the optimizer
    ``wrapper.parameters()`` (the model's and the heads'), not ``model.parameters()``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
        ...                           torch.nn.Flatten(), torch.nn.LazyLinear(3))
        >>> wrapped = attach_auxiliary_classifiers(net, at=["0"], num_classes=3)
        >>> logits, aux = wrapped(torch.randn(2, 1, 8, 8))
        >>> logits.shape, aux[0].shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
        >>> wrapped.detach() is net
        True
    """
    return AuxiliaryClassifiers(model, at, num_classes, example_inputs)


def combined_loss(
    outputs: tuple[torch.Tensor, Sequence[torch.Tensor]] | torch.Tensor,
    target: torch.Tensor,
    *,
    aux_weight: float = 0.3,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """``criterion(logits) + aux_weight * sum(criterion(aux_logits))``; plain logits pass through.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0]]); target = torch.tensor([0])
        >>> aux = [torch.tensor([[0.0, 0.0]])]
        >>> float(combined_loss((logits, aux), target, aux_weight=0.5)) == float(
        ...     F.cross_entropy(logits, target) + 0.5 * F.cross_entropy(aux[0], target))
        True
    """
    weight = check_finite_nonnegative("aux_weight", aux_weight)
    if isinstance(outputs, torch.Tensor):
        return criterion(outputs, target)
    logits, aux = outputs
    loss = criterion(logits, target)
    for extra in aux:
        loss = loss + weight * criterion(extra, target)
    return loss
