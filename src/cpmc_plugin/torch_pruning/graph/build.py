"""torch-pruning's dependency graph: building it with a clear error (advice that fits the
cause), a trace that keeps no activations, and the groups the host read while building."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...attention.eager import eager_attention
from ...core.probe import forward_once
from ...core.tracing import autograd_on
from .negative_concat import unmap_non_channel_concats

__all__ = [
    "SeenGroups",
    "build_graph",
    "describe_host_failure",
    "remembering_groups",
    "shapes_only_autograd",
]


def describe_host_failure(error: BaseException) -> str:
    """A ``ValueError`` message for a failure inside torch-pruning's graph tracing.

    It says that the model itself ran (the caller checked), quotes the exception with
    where it came from, and gives the advice that fits its cause: autograd switched off
    around the call, an error inside one of the caller's customized pruners, an output
    the host cannot read (``None`` beside the tensors: ``output_transform``), or an
    operation the host cannot follow.
    """
    what = f"{type(error).__name__}: {error}"
    pruner = _customized_pruner_frame(error)
    if pruner is not None:
        owner, frame = pruner
        return (
            f"the model runs on example_inputs, but the customized pruner {owner} raised "
            f"{what} in {frame.name}() ({frame.filename}:{frame.lineno}) while "
            "torch-pruning's DependencyGraph traced the model. The error is in that "
            "pruner, not a limit of the host: fix it, or leave its layer type out of "
            "customized_pruners"
        )
    frames = traceback.extract_tb(error.__traceback__)
    paths = [(f, f.filename.replace("\\", "/")) for f in frames]
    host = [f for f, path in paths if "/torch_pruning/" in path and "/cpmc_plugin/" not in path]
    where = f" in torch_pruning's {host[-1].name}()" if host else ""
    if "relies on autograd" in str(error):
        return (
            f"torch-pruning's DependencyGraph could not trace the model: {what}{where}. "
            "It follows channels through autograd, which was switched off around the "
            "call (torch.inference_mode(), or set_grad_enabled(False) inside the model's "
            "forward): build the pruner outside such a block"
        )
    if host and host[-1].name == "flatten_as_list":
        return (
            "the model runs on example_inputs, but torch-pruning's DependencyGraph cannot "
            f"read its output: {what}{where}. The host reads the output's tensors only "
            "through lists, tuples and dicts (no None, numbers or other objects in them): "
            "pass output_transform= a function that returns the output's tensors (e.g. "
            "output_transform=lambda out: out[0])"
        )
    return (
        "the model runs on example_inputs, but torch-pruning's DependencyGraph failed to "
        f"trace it: {what}{where}. The host cannot follow some "
        "channel operation of this model (for example a channel shuffle: a reshape and "
        "transpose across the channel dimension). Wrap that operation in an nn.Module and "
        "register a customized pruner for it (customized_pruners={ModuleType: pruner}), "
        "or keep the layers around it out of the pruned set (ignored_layers)"
    )


def _customized_pruner_frame(
    error: BaseException,
) -> tuple[str, traceback.FrameSummary] | None:
    """The innermost frame of ``error`` that runs a method of a pruning function that is
    not torch-pruning's own (a caller's customized pruner): its class and the frame."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        cls = type(owner)
        if isinstance(owner, tp.pruner.function.BasePruningFunc) and not cls.__module__.startswith(
            ("torch_pruning", "cpmc_plugin")
        ):
            summary = traceback.FrameSummary(
                tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name
            )
            found = (f"{cls.__module__}.{cls.__qualname__}", summary)
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def shapes_only_autograd() -> Iterator[None]:
    """Autograd inside the block saves each tensor's shape, not its data.

    torch-pruning traces a model with autograd and keeps the graph's nodes, reading only
    their structure and integer attributes (``_saved_dim``, ``_saved_self_sym_sizes``,
    ...); the activations saved for a backward that never runs would stay alive with the
    graph (a third of a 0.5B LLM's size at 64 tokens). Unpacking gives a meta tensor
    of the right shape, so code that reads a saved tensor's shape still works.
    """

    def pack(tensor: torch.Tensor) -> tuple[torch.Size, torch.dtype]:
        return tensor.shape, tensor.dtype

    def unpack(saved: tuple[torch.Size, torch.dtype]) -> torch.Tensor:
        return torch.empty(saved[0], dtype=saved[1], device="meta")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced in eval mode.

    Tracing in eval mode leaves BatchNorm running statistics alone; the model's
    train/eval mode is restored. Inputs that cannot run give a ``ValueError``, and so
    does a model that runs but that the host cannot trace (the message says which).
    """
    forward_once(model, example_inputs)
    was_training = model.training
    try:
        model.eval()
        with autograd_on(model), shapes_only_autograd(), eager_attention(model):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs)
        unmap_non_channel_concats(graph)
        return graph
    except Exception as error:
        raise ValueError(describe_host_failure(error)) from error
    finally:
        model.train(was_training)


@dataclass
class SeenGroups:
    """The groups a ``DependencyGraph.get_all_groups`` call yielded, and its arguments."""

    graph: tp.DependencyGraph
    ignored_layers: Any
    root_module_types: Any
    groups: list[tp.Group]
    finished: bool = False


@contextlib.contextmanager
def remembering_groups() -> Iterator[list[SeenGroups]]:
    """Keep the groups every ``get_all_groups`` call inside the block yields.

    torch-pruning's ``BasePruner.__init__`` reads every group once to count channels
    and drops them; a pruner that reads the same groups next can take these instead
    of deriving each group (and its concatenation index maps) a second time. The
    host's method is wrapped for the duration of the block only.
    """
    real = tp.DependencyGraph.get_all_groups
    seen: list[SeenGroups] = []

    def get_all_groups(self: tp.DependencyGraph, *args: Any, **kwargs: Any) -> Iterator[Any]:
        names = ("ignored_layers", "root_module_types")
        bound = dict(zip(names, args, strict=False)) | kwargs
        record = SeenGroups(self, bound.get("ignored_layers"), bound.get("root_module_types"), [])
        seen.append(record)
        for group in real(self, *args, **kwargs):
            record.groups.append(group)
            yield group
        record.finished = True

    tp.DependencyGraph.get_all_groups = get_all_groups
    try:
        yield seen
    finally:
        tp.DependencyGraph.get_all_groups = real
