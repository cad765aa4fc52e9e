"""Auxiliary classifiers on shallow and intermediate layers, for sparse training.

The end-to-end BN pruning method trains small classifiers on intermediate features
next to the network's own, so that shallow layers stay discriminative while their
channels are being sparsified. :func:`attach_auxiliary_classifiers` wraps a model
without touching its module tree (forward hooks read the features; the heads live in
the wrapper); :meth:`AuxiliaryClassifiers.detach` removes the hooks and gives the
plain model back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from ..core import validate
from ..core.probe import forward_once
from ._channels import Inferred, infer_channels, input_hint

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


class AuxiliaryClassifiers(nn.Module):
    """A model plus classifiers on the outputs of some of its layers.

    ``forward`` returns ``(logits, [aux_logits, ...])`` (one per name in ``at``, in
    order). Train with :func:`combined_loss`; call :meth:`detach` afterwards.
    """

    def __init__(
        self, model: nn.Module, at: Sequence[str], num_classes: int, example_inputs: Any = None
    ) -> None:
        validate.module("model", model)
        validate.integer("num_classes", num_classes, minimum=1)
        if isinstance(at, str) or not isinstance(at, Sequence):
            raise TypeError(f"at must be a non-empty list of module names, got {at!r}")
        if not at:
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
                found = infer_channels(modules, name)
                if not isinstance(found, Inferred):
                    raise ValueError(
                        f"cannot tell how many channels {name!r} ({type(modules[name]).__name__}) "
                        f"outputs: {found}; pass {input_hint(model)}"
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
                f"attach it again with {input_hint(self.model)}, so the count is measured"
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
    weight = validate.number("aux_weight", aux_weight, minimum=0)
    if isinstance(outputs, torch.Tensor):
        return criterion(outputs, target)
    logits, aux = outputs
    loss = criterion(logits, target)
    for extra in aux:
        loss = loss + weight * criterion(extra, target)
    return loss
