"""torch-pruning's dependency graph: building it with a clear error, and repairing its
concatenation index maps."""

from __future__ import annotations

import contextlib
import copy
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from ...attention.eager import eager_attention
from ...core.atomic import ModelSnapshot
from ...core.probe import forward_once
from ...core.tracing import autograd_on
from .negative_concat import unmap_non_channel_concats

__all__ = [
    "GraphSnapshot",
    "PruneSnapshot",
    "SeenGroups",
    "build_graph",
    "describe_host_failure",
    "remembering_groups",
    "repair_concat_mappings",
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


class _LiveConcatMapping:
    """Index mapping through segment ``index`` of a concatenation, at its current sizes.

    The offsets are read from the concat op's ``concat_sizes`` at every call, which
    torch-pruning's ``ConcatPruner`` keeps current as channels go, so the mapping stays
    right after earlier groups were pruned. ``reverse``: from the concat's output to
    the segment's input (keeps only the indices that fall in the segment).
    """

    def __init__(self, op: Any, index: int, reverse: bool) -> None:
        self.op = op
        self.index = index
        self.reverse = reverse

    def __call__(self, idxs: Sequence[Any]) -> list[Any]:
        sizes = self.op.concat_sizes
        start = int(sum(sizes[: self.index]))
        end = start + int(sizes[self.index])
        hybrid = tp._helpers._HybridIndex
        if self.reverse:
            return [hybrid(i.idx - start, i.root_idx) for i in idxs if start <= i.idx < end]
        return [hybrid(i.idx + start, i.root_idx) for i in idxs]


def _output_shape(node: Any) -> tuple[int, ...] | None:
    """The shape of the tensor a graph node produced, read from its autograd node."""
    metadata: Any = getattr(node.grad_fn, "_input_metadata", None)
    try:
        return tuple(int(n) for n in metadata[0].shape)
    except (TypeError, IndexError, AttributeError):
        return None


def repair_concat_mappings(graph: tp.DependencyGraph) -> int:
    """Map channel indices through the concatenations that torch-pruning leaves unmapped.

    The host maps indices through a ``torch.cat`` on dimension 1 only when the channels
    its consumer reads add up to the segments' sum. A concat that is pooled and then
    flattened into a Linear layer fails that check (the Linear reads ``channels * H * W``
    features), so the host leaves the identity mapping in place: channel ``i`` of *every*
    segment is then coupled with output channel ``i``, unrelated channels are pruned
    together, and the pruned model cannot run. Here every such concat whose output
    really has the segments' channels on dimension 1 (checked on the traced tensors)
    gets a mapping that follows the current segment sizes. Idempotent.

    Returns:
        The number of concatenations repaired by this call.
    """
    repaired = 0
    for node in graph.module2node.values():
        op = node.module
        if node.type != tp.ops.OPTYPE.CONCAT or op.offsets is not None:
            continue  # mapped by the host
        if getattr(op, "_cpmc_live_mapping", False) or not node.enable_index_mapping:
            continue
        shape, dim = _output_shape(node), getattr(node.grad_fn, "_saved_dim", None)
        if shape is None or len(shape) < 2 or not isinstance(dim, int) or dim % len(shape) != 1:
            continue
        sizes = op.concat_sizes
        if not sizes or len(sizes) != len(node.inputs) or any(s is None for s in sizes):
            continue
        if shape[1] != sum(sizes):
            continue  # concatenated along another dimension than the channels
        pairs = []
        for parent, size in zip(node.inputs, sizes, strict=True):
            parent_shape = _output_shape(parent)
            if parent_shape is not None and (len(parent_shape) < 2 or parent_shape[1] != size):
                break
            backward = [dep for dep in node.dependencies if dep.target == parent]
            forward = [dep for dep in parent.dependencies if dep.target == node]
            if len(backward) != 1 or len(forward) != 1:
                break  # a tensor concatenated twice: its segments cannot be told apart
            pairs.append((backward[0], forward[0]))
        if len(pairs) != len(sizes):
            continue
        for index, (backward, forward) in enumerate(pairs):
            backward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=True)
            forward.index_mapping[1] = _LiveConcatMapping(op, index, reverse=False)
        op._cpmc_live_mapping = True
        repaired += 1
    return repaired


def _operation_state(module: nn.Module) -> dict[str, Any]:
    """The plain values (sizes, offsets, shapes, slice bounds) a torch-pruning operation
    node keeps about the tensors it joins or cuts, copied."""
    return {
        name: copy.deepcopy(value)
        for name, value in vars(module).items()
        if not name.startswith("_") and isinstance(value, list | tuple | int | float | None)
    }


class GraphSnapshot:
    """What pruning a group changes in the graph itself, to put back with the model.

    ``group.prune()`` appends to the graph's pruning history, re-keys the graph's
    parameter maps to the new object of an unwrapped ``nn.Parameter``, and rewrites the
    state of the graph's operation nodes (``tp.ops``: a concatenation's
    ``concat_sizes``, a split's ``split_sizes``, an output's ``shape``, a slice's
    bounds), some of it in place. Restoring a
    :class:`~cpmc_plugin.core.atomic.ModelSnapshot` puts the old objects back in the
    model; :meth:`restore` puts all of that back too, so a restored prune leaves no
    trace (a calibration candidate, a corrected plan, a refused step), and the next
    prune maps channels through the concatenations as the first one did.
    """

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.graph = graph
        self.history = list(graph._pruning_history)
        self.param_to_name = dict(graph._param_to_name)
        self.module2node = dict(graph.module2node)
        self.node_modules = [(node, node.module) for node in graph.module2node.values()]
        self.operations = [
            (module, _operation_state(module))
            for module in graph.module2node
            if type(module).__module__ == tp.ops.__name__
        ]

    def restore(self) -> None:
        """Put the history, the parameter names, the node map and the operation nodes'
        state back as they were."""
        graph = self.graph
        graph._pruning_history = list(self.history)
        graph._param_to_name = dict(self.param_to_name)
        graph.module2node = dict(self.module2node)
        for node, module in self.node_modules:
            node.module = module
        for module, state in self.operations:
            for name, value in state.items():  # a copy again: pruning edits lists in place
                setattr(module, name, copy.deepcopy(value))


class PruneSnapshot:
    """A :class:`~cpmc_plugin.core.atomic.ModelSnapshot` of the graph's model and a
    :class:`GraphSnapshot` of the graph: :meth:`restore` undoes a prune completely."""

    def __init__(
        self,
        graph: tp.DependencyGraph,
        *,
        clone: bool = False,
        clone_buffers: bool = False,
        after_restore: Callable[[], None] | None = None,
    ) -> None:
        self.model = ModelSnapshot(graph.model, clone=clone, clone_buffers=clone_buffers)
        self.graph = GraphSnapshot(graph)
        self.after_restore = after_restore

    def restore(self) -> None:
        """Put the model's modules and tensors, and the graph's maps, back; then call
        ``after_restore`` (state derived from the shapes, such as a shared config)."""
        self.model.restore()
        self.graph.restore()
        if self.after_restore is not None:
            self.after_restore()


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
