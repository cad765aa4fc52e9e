"""What a model does on data, per channel: the scale of what each layer reads and
writes, and the gradients of its parameters (:func:`collect_activity`).

Data-aware CPMC (docs/methods.md, "Data-aware CPMC") weights the weights that die with
a channel by the activation they act on, and adds a first-order loss term from these
gradients. Everything is gathered with forward hooks in one pass over a few batches,
on the model itself (no copy), in eval mode; the model's mode and the parameters'
``.grad`` are put back afterwards.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> data = [(torch.ones(4, 2), torch.tensor([0, 1, 0, 1]))]
    >>> activity = collect_activity(net, data, modules=[net[0], net[2]], gradients=True)
    >>> activity.inputs[net[0]].tolist()  # mean square of each input channel
    [1.0, 1.0]
    >>> tuple(activity.gradients[net[0].weight].shape), net[0].weight.grad is None
    ((3, 2), True)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .probe import channel_dim, run_model
from .proxy import move_to
from .validate import integer

__all__ = ["ChannelActivity", "collect_activity", "split_batch"]


@dataclass
class ChannelActivity:
    """Per-channel statistics of a model on data.

    Attributes:
        inputs: for each observed module, the mean square of each channel of its first
            input (what it reads: after the BatchNorm and nonlinearity before it).
        outputs: for each observed module, the mean square of each output channel.
        gradients: each parameter's gradient of the loss, summed over the batches
            (empty unless gradients were asked for).
        batches: how many batches were seen.
    """

    inputs: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    outputs: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    gradients: dict[torch.Tensor, torch.Tensor] = field(default_factory=dict)
    batches: int = 0

    def input_scale(self, module: nn.Module, p: float) -> torch.Tensor | None:
        """``rms^p`` of each channel ``module`` reads (``None`` if not observed)."""
        found = self.inputs.get(module)
        return None if found is None else found.pow(p / 2)

    def output_scale(self, module: nn.Module, p: float) -> torch.Tensor | None:
        """``rms^p`` of each channel ``module`` writes (``None`` if not observed)."""
        found = self.outputs.get(module)
        return None if found is None else found.pow(p / 2)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch given as a pair, or ``(batch, None)``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _logits(outputs: Any) -> Any:
    """The logits of a model's output (``outputs.logits`` for Hugging Face models)."""
    return getattr(outputs, "logits", outputs)


def _default_loss(outputs: Any, targets: Any) -> torch.Tensor:
    return F.cross_entropy(_logits(outputs), targets)


class _Squares:
    """Running per-channel sums of squares of one module's tensors."""

    def __init__(self) -> None:
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, int] = {}

    def add(self, module: nn.Module, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            return
        if tensor.dim() == 0:
            return
        dim = channel_dim(module, tensor.dim())
        x = tensor.detach().double().movedim(dim, 0).reshape(tensor.shape[dim], -1)
        sums = x.square().sum(1).cpu()
        previous = self.sums.get(module)
        if previous is not None and previous.shape != sums.shape:
            return  # a module called with other widths (shared): keep the first
        self.sums[module] = sums if previous is None else previous + sums
        self.counts[module] = self.counts.get(module, 0) + x.shape[1]

    def means(self) -> dict[nn.Module, torch.Tensor]:
        return {m: s / max(self.counts[m], 1) for m, s in self.sums.items()}


def collect_activity(
    model: nn.Module,
    data: Iterable[Any],
    *,
    modules: Sequence[nn.Module],
    batches: int = 8,
    gradients: bool = False,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
) -> ChannelActivity:
    """Run up to ``batches`` batches of ``data`` through ``model`` and gather, for each of
    ``modules``, the per-channel mean square of its input and output; with
    ``gradients``, also backpropagate ``loss_fn(outputs, targets)`` (default: cross
    entropy over the logits) and sum every parameter's gradient.

    A batch is ``(inputs, targets)`` or, without gradients, inputs alone; inputs are
    moved to the model's device and passed as ``CPMCPruner`` passes ``example_inputs``.

    Raises:
        ValueError: no batch, or a batch without targets when gradients are asked for.
    """
    integer("batches", batches, minimum=1)
    loss = _default_loss if loss_fn is None else loss_fn
    parameters = list(model.parameters()) if gradients else []
    device = next(model.parameters(), torch.empty(0)).device
    inputs_seen, outputs_seen = _Squares(), _Squares()

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args:
            inputs_seen.add(module, args[0])
        outputs_seen.add(module, output)

    handles = [m.register_forward_hook(hook) for m in dict.fromkeys(modules)]
    saved = [(p, p.grad, p.requires_grad) for p in parameters]
    was_training = model.training
    seen = 0
    model.eval()
    try:
        for p in parameters:
            p.grad = None
            if gradients:
                p.requires_grad_(True)
        for batch in itertools.islice(data, batches):
            inputs, targets = split_batch(move_to(batch, device))
            if not gradients:
                with torch.no_grad():
                    run_model(model, inputs)
            else:
                if targets is None:
                    raise ValueError(
                        "the Taylor term needs (inputs, targets) batches: got a batch "
                        "without targets"
                    )
                with torch.enable_grad():
                    outputs = run_model(model, inputs)
                    try:
                        value = loss(outputs, targets)
                    except Exception as error:
                        raise ValueError(
                            f"the Taylor term's loss failed on batch {seen}: "
                            f"{type(error).__name__}: {error}. Pass loss_fn(outputs, targets) "
                            "that fits the model's outputs and the batches' targets"
                        ) from error
                    value.backward()
            seen += 1
        if not seen:
            raise ValueError("data gave no batch: pass at least one (inputs, targets) batch")
        found: dict[torch.Tensor, torch.Tensor] = {
            p: p.grad.detach().clone() for p in parameters if p.grad is not None
        }
    finally:
        for handle in handles:
            handle.remove()
        for param, grad, requires in saved:
            param.grad = grad
            param.requires_grad_(requires)
        model.train(was_training)
    return ChannelActivity(inputs_seen.means(), outputs_seen.means(), found, seen)
