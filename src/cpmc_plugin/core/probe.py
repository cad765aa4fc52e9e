"""Forward hooks that record, per module call, the output size and the autograd node."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .layers import POOLING_TYPES

__all__ = [
    "ModuleCall",
    "channel_dim",
    "forward_hooks",
    "forward_once",
    "positions_by_module",
    "probe_positions",
    "record_calls",
    "run_model",
]


@dataclass
class ModuleCall:
    """One call of a leaf module during a probing forward pass (sizes per sample)."""

    module: nn.Module
    positions: int  # output elements per channel (H*W for conv maps, 1 for a Linear on [N, F])
    weight: int  # share of the module's counted cost this call carries (elements touched)
    grad_fn: Any


def channel_dim(module: nn.Module, ndim: int) -> int:
    """The dimension of a module's output that indexes channels."""
    if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)):
        return ndim - 1
    return 1 if ndim >= 2 else 0


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def run_model(model: nn.Module, example_inputs: Any) -> Any:
    """Call ``model`` the way torch-pruning does with ``example_inputs``."""
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


@contextlib.contextmanager
def record_calls(model: nn.Module) -> Iterator[list[ModuleCall]]:
    """Record every leaf-module call made inside the ``with`` block.

    The calls of a forward of ``model`` that raised are dropped: torch-pruning's tracer
    first tries ``model(*example_inputs)``, which on a batch-1 tensor runs the first
    layers on the unbatched sample before it fails, and then ``model(example_inputs)``.
    """
    calls: list[ModuleCall] = []
    starts: list[tuple[int, list[bool]]] = []  # per running forward of model: start, done

    def enter(module: nn.Module, args: Any) -> None:
        starts.append((len(calls), [False]))

    def succeeded(module: nn.Module, args: Any, output: Any) -> None:
        if starts:
            starts[-1][1][0] = True

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if starts:
            start, done = starts.pop()
            if not done[0]:  # the forward raised: forget what it called
                del calls[start:]

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        out = _first_tensor(output)
        if out is None or out.dim() == 0:
            return
        batch = out.shape[0] if out.dim() >= 2 else 1
        dim = channel_dim(module, out.dim())
        channels = int(out.shape[dim])
        per_sample = out.numel() // max(batch, 1)
        weight = per_sample
        if isinstance(module, POOLING_TYPES):
            inp = _first_tensor(inputs)
            if inp is not None:
                weight = inp.numel() // max(batch, 1)
        calls.append(
            ModuleCall(
                module=module,
                positions=per_sample // max(channels, 1),
                weight=weight,
                grad_fn=out.grad_fn,
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    handles += [
        model.register_forward_pre_hook(enter),
        model.register_forward_hook(succeeded),
        model.register_forward_hook(leave, always_call=True),
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def positions_by_module(calls: list[ModuleCall]) -> dict[nn.Module, int]:
    """Output positions per module, summed over its calls (a reused layer costs more)."""
    positions: dict[nn.Module, int] = {}
    for call in calls:
        positions[call.module] = positions.get(call.module, 0) + call.positions
    return positions


def forward_once(
    model: nn.Module, example_inputs: Any, runner: Callable[[nn.Module, Any], Any] = run_model
) -> Any:
    """Run ``model`` once on ``example_inputs`` in eval mode without gradients.

    The train/eval mode is restored; inputs that do not fit the model give a ``ValueError``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return runner(model, example_inputs)
    except Exception as error:  # the user's inputs do not fit the model
        raise ValueError(
            f"example_inputs cannot run through the model: {type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)


def forward_hooks(
    model: nn.Module,
    example_inputs: Any,
    hooks: Mapping[nn.Module, Callable[..., Any]],
    *,
    pre: bool = False,
    with_kwargs: bool = False,
) -> Any:
    """Run :func:`forward_once` with ``hooks[m]`` registered on each module ``m``; the
    hooks are removed afterwards, whatever happens. Returns the model's output.

    ``pre=True`` registers forward-pre hooks; ``with_kwargs=True`` passes the keyword
    arguments to the hooks too (torch's ``with_kwargs``).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
        >>> seen = []
        >>> _ = forward_hooks(net, torch.ones(1, 3), {net[0]: lambda m, i, o: seen.append(o.shape)})
        >>> seen, net[0]._forward_hooks
        ([torch.Size([1, 2])], OrderedDict())
    """
    register = "register_forward_pre_hook" if pre else "register_forward_hook"
    handles = [getattr(m, register)(h, with_kwargs=with_kwargs) for m, h in hooks.items()]
    try:
        return forward_once(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()


def probe_positions(
    model: nn.Module, example_inputs: Any, runner: Callable[[nn.Module, Any], Any] = run_model
) -> dict[nn.Module, int]:
    """Run ``model`` once on ``example_inputs`` (no grad) and return output positions."""
    with record_calls(model) as calls:
        forward_once(model, example_inputs, runner)
    return positions_by_module(calls)
