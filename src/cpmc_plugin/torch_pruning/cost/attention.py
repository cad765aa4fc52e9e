"""The attention matmuls torch-pruning's counter misses: QKᵀ and AV.

``tp.utils.count_ops_and_params`` counts layers. ``nn.MultiheadAttention`` has its own
rule that includes QKᵀ and AV, but attention written as functions (Hugging Face's
eager ``torch.matmul``, timm's and Hugging Face's ``F.scaled_dot_product_attention``)
counts 0 beyond its projections, which at a long context is a large share of a
transformer's MACs. :func:`counting_attention` records, during a forward, every
matmul of two activations and every ``scaled_dot_product_attention``, with the module
whose forward ran it:

- ``a @ b`` with ``a`` of shape ``(..., M, K)`` and ``b`` of ``(..., K, N)``: the
  broadcast batch size x ``M * K * N`` multiply-accumulates;
- ``scaled_dot_product_attention(q, k, v)``: ``B * H * L * S * (E + Ev)`` (QKᵀ and AV;
  the causal half is counted whole, as a dense kernel computes it).

A matmul with a parameter operand is a layer's work, and matmuls inside a module the
host counts by itself (``nn.MultiheadAttention``) are its count already: neither is
recorded. Counts are per sample, like the host's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch_pruning.utils import op_counter as _host

from ...core.probe import forward_once

__all__ = ["AttentionTally", "attention_matmuls", "attention_modules", "counting_attention"]

_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
_WATCHED = frozenset(_MATMULS | {F.scaled_dot_product_attention})


def _matmul_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    if a.dim() < 2 or b.dim() < 2:
        return 0
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return math.prod(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _sdpa_macs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    if q.dim() < 2:
        return 0
    length, source = q.shape[-2], k.shape[-2]
    return math.prod(q.shape[:-2]) * length * source * (q.shape[-1] + v.shape[-1])


class AttentionTally:
    """Per-sample attention MACs of the forwards of a :func:`counting_attention` block."""

    def __init__(self) -> None:
        self.raw: dict[nn.Module, int] = {}
        self.batch = 0

    def per_sample(self) -> dict[nn.Module, float]:
        """MACs of each module's own attention matmuls, per sample."""
        batch = self.batch or 1
        return {m: v / batch for m, v in self.raw.items() if v}


class _Mode(TorchFunctionMode):
    def __init__(self, tally: AttentionTally, stack: list[nn.Module]) -> None:
        super().__init__()
        self.tally, self.stack = tally, stack

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _WATCHED or not self.stack or self.stack[-1] is None:
            return func(*args, **kwargs)  # the common case first: every op passes here
        macs = 0
        if func is F.scaled_dot_product_attention:
            if len(args) >= 3:
                macs = _sdpa_macs(args[0], args[1], args[2])
        elif len(args) >= 2 and _activations(args[0], args[1]):
            macs = _matmul_macs(args[0], args[1])
        if macs:
            owner = self.stack[-1]
            self.tally.raw[owner] = self.tally.raw.get(owner, 0) + int(macs)
        return func(*args, **kwargs)


def _activations(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and not isinstance(a, nn.Parameter)
        and not isinstance(b, nn.Parameter)
    )


@contextlib.contextmanager
def counting_attention(model: nn.Module) -> Iterator[AttentionTally]:
    """Record the attention matmuls of the model's forwards in the block.

    The batch size is the first positional input's length, as the host reads it; a
    forward that raises records nothing.

    Example:
        >>> class Attend(nn.Module):
        ...     def forward(self, q, k):
        ...         return (q @ k.transpose(-1, -2)).softmax(-1) @ k
        >>> net = Attend()
        >>> with counting_attention(net) as tally:
        ...     _ = net(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4))
        >>> tally.per_sample()[net] == 2 * 3 * 5 * 7 * 4
        True
    """
    tally = AttentionTally()
    stack: list[Any] = []
    handles = []
    for module in model.modules():
        counted = _host.is_supported_instance(module)  # the host counts its matmuls

        def enter(m: nn.Module, _inputs: Any, counted: bool = counted) -> None:
            inside_counted = bool(stack) and stack[-1] is None
            stack.append(None if counted or inside_counted else m)

        def leave(_m: nn.Module, _inputs: Any, _output: Any) -> None:
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    saved: list[tuple[dict[nn.Module, int], int] | None] = []  # None: the forward succeeded

    def start(_m: nn.Module, _inputs: Any) -> None:
        saved.append((dict(tally.raw), tally.batch))

    def done(_m: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        first: Any = inputs[0] if inputs else None
        tally.batch += len(first) if hasattr(first, "__len__") else 1
        saved[-1] = None

    def finish(_m: nn.Module, _inputs: Any, _output: Any) -> None:
        before = saved.pop()
        if before is not None:  # the forward raised: forget what it recorded
            tally.raw, tally.batch = before

    handles.append(model.register_forward_pre_hook(start, prepend=True))
    handles.append(model.register_forward_hook(done))
    handles.append(model.register_forward_hook(finish, always_call=True))
    try:
        with _Mode(tally, stack):
            yield tally
    finally:
        for handle in handles:
            handle.remove()


def attention_matmuls(model: nn.Module, example_inputs: Any) -> dict[nn.Module, float]:
    """Each module's attention matmuls in one forward on ``example_inputs``, per sample."""
    with counting_attention(model) as tally:
        forward_once(model, example_inputs)
    return tally.per_sample()


def attention_modules(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the modules that compute attention: every ``nn.MultiheadAttention``, and
    every module whose forward on ``example_inputs`` multiplies two activations or calls
    ``scaled_dot_product_attention``.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        >>> attention_modules(net, torch.randn(1, 4))
        []
    """
    names = {m: n or type(m).__name__ for n, m in model.named_modules()}
    found: list[nn.Module] = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    found += [m for m in attention_matmuls(model, example_inputs) if m not in found]
    return [names[m] for m in found]
