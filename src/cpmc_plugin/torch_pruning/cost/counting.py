"""Counting a model's MACs and parameters as ``tp.utils.count_ops_and_params`` does, plus
the attention matmuls (QKᵀ, AV) it misses (:mod:`.attention_macs`).

Two ways, with the same numbers:

- :func:`_count` runs the host's counter itself, on a meta-device twin (no weights
  copied, nothing computed);
- :func:`host_counter` registers the host's own per-layer counting hooks on the model
  for a forward the caller runs anyway (the pruner's check that the pruned model still
  runs), so that counting costs no forward of its own.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> with host_counter(net) as tally, torch.no_grad():
    ...     _ = net(x)
    >>> counted = tally.counts()
    >>> (counted.macs, counted.params) == tuple(map(float, count_ops_and_params(net, x)))
    True
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.utils._pytree import tree_map
from torch_pruning.utils import count_ops_and_params
from torch_pruning.utils import op_counter as _host

from .attention import AttentionTally, attention_matmuls, counting_attention

__all__ = ["Counts", "HostTally", "count_model", "count_ops_and_params", "host_counter"]


@dataclass(frozen=True)
class Counts:
    """Per-sample MACs (the host's count plus the attention matmuls it misses) and
    parameters, with each layer's share; ``attention`` holds each module's own
    attention matmuls (see :mod:`~cpmc_plugin.torch_pruning.cost.attention`)."""

    macs: float
    params: float
    layer_macs: dict[nn.Module, float]
    layer_params: dict[nn.Module, float]
    attention: dict[nn.Module, float] = field(default_factory=dict)

    def with_attention(self, attention: dict[nn.Module, float]) -> Counts:
        """These counts with ``attention``'s matmuls added to the total."""
        if not attention:
            return self
        total = self.macs + sum(attention.values())
        return replace(self, macs=total, attention=dict(attention))


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


def count_model(model: nn.Module, example_inputs: Any, attention: bool = True) -> Counts:
    """``tp.utils.count_ops_and_params`` of ``model``, layer by layer.

    The host counter deep-copies the model and runs it; running it on a meta-device
    twin gives the same counts without copying weights or computing anything.
    Models that cannot run on the meta device are counted as they are. The count
    runs in eval mode (BatchNorm statistics stay put); the mode is restored.
    ``attention=False`` skips the attention matmuls (for a model known to have none).
    """
    was_training = model.training
    model.eval()
    try:
        return _count_eval(model, example_inputs, attention)
    finally:
        model.train(was_training)


def _count_eval(model: nn.Module, example_inputs: Any, attention_too: bool) -> Counts:
    try:
        twin, inputs = _meta_twin(model, example_inputs)
        macs, params, twin_macs, twin_params = tp.utils.count_ops_and_params(
            twin, inputs, layer_wise=True
        )
        pairs = list(zip(model.modules(), twin.modules(), strict=True))
        layer_macs = {m: twin_macs.get(t) for m, t in pairs}
        layer_params = {m: twin_params.get(t) for m, t in pairs}
        back = {t: m for m, t in pairs}
        found = attention_matmuls(twin, inputs) if attention_too else {}
        attention = {back[t]: v for t, v in found.items()}
    except Exception:
        macs, params, layer_macs, layer_params = tp.utils.count_ops_and_params(
            model, example_inputs, layer_wise=True
        )
        attention = attention_matmuls(model, example_inputs) if attention_too else {}
    counts = _per_sample(model, float(macs), float(params), layer_macs, layer_params)
    return counts.with_attention(attention)


def _per_sample(
    model: nn.Module,
    macs: float,
    params: float,
    layer_macs: dict[nn.Module, Any],
    layer_params: dict[nn.Module, Any],
) -> Counts:
    # per-layer MACs are summed over the batch while the total is per sample; the
    # whole model's entry is that batch sum (the counter also counts some modules that
    # are not leaves, e.g. nn.MultiheadAttention, so a sum over leaves would not do)
    batch_total = float(layer_macs.get(model) or 0.0)
    if batch_total <= 0:
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        batch_total = sum(float(layer_macs.get(m) or 0.0) for m in leaves)
    scale = float(macs) / batch_total if batch_total > 0 else 1.0
    per_sample = {m: float(v or 0.0) * scale for m, v in layer_macs.items()}
    return Counts(float(macs), float(params), per_sample, dict(layer_params))


def _layer_params(model: nn.Module) -> dict[nn.Module, int]:
    """``sum(p.numel() for p in m.parameters())`` for every module ``m``, as the host counts.

    Summed up the tree from each module's own parameters when no parameter is shared
    (each module is then visited once, not once per ancestor); else counted per module.
    """
    own = {m: list(m.parameters(recurse=False)) for m in model.modules()}
    tensors = [id(p) for _, p in model.named_parameters(remove_duplicate=False)]
    modules = [id(m) for _, m in model.named_modules(remove_duplicate=False)]
    if len(tensors) != len(set(tensors)) or len(modules) != len(set(modules)):
        return {m: sum(p.numel() for p in m.parameters()) for m in own}  # something is shared
    out: dict[nn.Module, int] = {}

    def total(module: nn.Module) -> int:
        if module not in out:
            out[module] = sum(p.numel() for p in own[module]) + sum(
                total(child) for child in module.children()
            )
        return out[module]

    total(model)
    return out


class _Stand:
    """Stands in for one layer in the host's counting hook: reads the layer's attributes
    (``isinstance`` sees the layer's class) and keeps the ``__flops__`` it adds up."""

    def __init__(self, module: nn.Module) -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "__flops__", 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_module"), name)

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 - isinstance() looks here
        return type(object.__getattribute__(self, "_module"))


class HostTally:
    """What the host's counting hooks added up during the forwards of a ``with`` block."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stands: dict[nn.Module, _Stand] = {}
        self.batch = 0
        self.attention = AttentionTally()

    def counts(self) -> Counts:
        """The counts ``tp.utils.count_ops_and_params(model, x, layer_wise=True)`` gives
        for the forward(s) of the block (one forward, as the host runs)."""
        layer_flops: dict[nn.Module, Any] = {}

        def accumulate(module: nn.Module) -> Any:  # the host's accumulate_flops
            stand = self.stands.get(module)
            if stand is not None:
                total = stand.__flops__
            else:
                total = sum(accumulate(child) for child in module.children())
            layer_flops[module] = total
            return total

        flops = accumulate(self.model)
        for module in self.model.modules():  # the host lists the layers it skipped as None
            layer_flops.setdefault(module, None)
        macs = flops / self.batch if self.batch else 0.0
        layer_params = _layer_params(self.model)
        params = layer_params[self.model]
        counts = _per_sample(self.model, float(macs), float(params), layer_flops, layer_params)
        return counts.with_attention(self.attention.per_sample())


@contextlib.contextmanager
def host_counter(model: nn.Module, attention: bool = True) -> Iterator[HostTally]:
    """Count MACs with torch-pruning's own layer hooks during the forwards run in the block
    (and the attention matmuls the host misses, see :class:`Counts`).

    The hooks and layer types are the host's (``MODULES_MAPPING`` and its custom
    mapping); the batch size is that of the model's first positional input, as the
    host's batch counter reads it. A forward of the model that raises counts nothing
    (torch-pruning's tracer may try a call that fails first). After one forward in eval
    mode, :meth:`HostTally.counts` equals the host's count exactly. ``attention=False``
    skips the attention matmuls (recording them costs every op a Python call).
    """
    tally = HostTally(model)
    handles = []
    for module in model.modules():
        if not _host.is_supported_instance(module):
            continue
        kind = type(module)
        count = _host.CUSTOM_MODULES_MAPPING.get(kind) or _host.MODULES_MAPPING[kind]
        stand = tally.stands[module] = _Stand(module)
        handles.append(
            module.register_forward_hook(
                lambda _m, inputs, output, count=count, stand=stand: count(stand, inputs, output)
            )
        )

    saved: list[tuple[int, dict[_Stand, Any]]] = []

    def enter(_model: nn.Module, _inputs: Any) -> None:
        saved.append((tally.batch, {s: s.__flops__ for s in tally.stands.values()}))

    def batch(_model: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        tally.batch += len(inputs[0]) if len(inputs) > 0 else 1
        saved[-1] = (-1, {})  # succeeded: keep what it counted

    def leave(_model: nn.Module, _inputs: Any, _output: Any) -> None:
        before, flops = saved.pop()
        if before >= 0:  # the forward raised: forget what it counted
            tally.batch = before
            for stand, value in flops.items():
                object.__setattr__(stand, "__flops__", value)

    handles.append(model.register_forward_pre_hook(enter))
    handles.append(model.register_forward_hook(batch))
    handles.append(model.register_forward_hook(leave, always_call=True))
    try:
        if attention:
            with counting_attention(model) as tally.attention:
                yield tally
        else:
            yield tally
    finally:
        for handle in handles:
            handle.remove()
