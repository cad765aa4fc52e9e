"""Hugging Face attention as torch-pruning can follow it: eager, for the length of a block.

A Hugging Face model built or loaded as it comes computes attention with a fused kernel
(``attn_implementation="sdpa"``, or flash attention). The kernel takes the key and value
heads once and repeats them for the query heads inside, so torch-pruning's trace never
sees which query heads read which key/value head. Eager attention writes that repeat
out (``repeat_kv``). :func:`eager_attention` switches a model to eager attention for a
block and back afterwards, with transformers' own ``set_attn_implementation`` where the
installed version has it, else through the config attribute the attention layers read.
Nothing here imports ``transformers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.nn as nn

__all__ = ["attention_implementation", "eager_attention"]


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation of a Hugging Face ``model`` (``None`` for other models).

    Example:
        >>> import torch
        >>> attention_implementation(torch.nn.Linear(2, 2)) is None
        True
    """
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    return implementation if isinstance(implementation, str) else None


def _set(model: nn.Module, implementation: str) -> None:
    setter: Any = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(implementation)
    if attention_implementation(model) != implementation:  # an older transformers
        config: Any = getattr(model, "config", None)
        config._attn_implementation = implementation


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Inside the block, a Hugging Face ``model`` computes attention eagerly.

    Its own implementation (``"sdpa"``, a flash kernel, ...) is set back when the block
    ends, also on an error, so ``save_pretrained`` writes what the model had. Models
    that are not Hugging Face models, and those already eager, are left alone.
    :class:`~cpmc_plugin.CPMCPruner` traces and checks inside this block by itself; wrap
    a ``tp.pruner.MetaPruner`` construction and ``step()`` in it (and in
    :func:`~cpmc_plugin.fixed_graphs`) for the host's pruner.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> with eager_attention(net):
        ...     out = net(torch.ones(1, 2))
        >>> tuple(out.shape)
        (1, 2)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    before = attention_implementation(model)
    if before is None or before == "eager":
        yield
        return
    _set(model, "eager")
    try:
        yield
    finally:
        _set(model, before)
