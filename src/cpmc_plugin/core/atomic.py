"""Apply a change to a model all or nothing: snapshot, apply, check that it runs, restore.

torch-pruning (and this package's own removal paths) change a model in place: they
replace parameters and buffers and rewrite module attributes such as
``out_channels``. :class:`ModelSnapshot` records every module's attributes and the
identity of every tensor, so that :meth:`ModelSnapshot.restore` puts the *same*
objects back (optimizers and user references stay valid). Tensors that a path
changes in place are only restored if the snapshot cloned them (``clone=True``).

:func:`check_still_runs` runs the changed model once on the example inputs and
compares the output shapes with its :func:`signature` from before; on any failure
the caller restores and raises a ``ValueError`` that names the module whose forward
failed.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 3))
    >>> snap = ModelSnapshot(net)
    >>> net[0].weight = nn.Parameter(torch.zeros(2, 4)); net[0].out_features = 2
    >>> snap.restore()
    >>> net[0].weight.shape, net[0].out_features
    (torch.Size([3, 4]), 3)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

from .probe import run_model
from .producers import output_paths, output_producers, output_tensors
from .torch_private import tensor_version

__all__ = [
    "ModelSnapshot",
    "Restorable",
    "RunFailure",
    "RunSignature",
    "SignatureRecorder",
    "changed_layers",
    "check_still_runs",
    "prune_atomically",
    "recording_signature",
    "shape_signature",
    "signature",
]


def _copy_value(value: Any) -> Any:
    if isinstance(value, (dict, list, set)):
        return value.copy()  # keeps the type: hook dicts are OrderedDicts held by weakrefs
    return value


@dataclass
class _TensorState:
    tensor: torch.Tensor
    data: torch.Tensor  # an alias of the storage the tensor had (restores ``t.data = ...``)
    version: int
    clone: torch.Tensor | None


class Restorable(Protocol):
    """State kept beside a model that a snapshot puts back too."""

    def restore(self) -> None: ...


class ModelSnapshot:
    """Every module's attributes and every tensor of ``model``, to put back on failure.

    Args:
        model: the model about to be changed in place.
        clone: also copy tensor values, for paths that change tensors in place
            (bias folding). Without it, an in-place change makes :meth:`restore`
            raise ``RuntimeError`` instead of restoring silently wrong values.
        clone_buffers: copy the values of buffers only (BatchNorm statistics that a
            re-estimation changes in place), not of parameters.
        parts: more state that changes with the model, each restored (``part.restore()``)
            after the model, in order: a host's graph (see
            :func:`cpmc_plugin.torch_pruning.graph.snapshot.prune_snapshot`).
        after_restore: called after every restore (state derived from the shapes).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        clone: bool = False,
        clone_buffers: bool = False,
        parts: Sequence[Restorable] = (),
        after_restore: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.parts = tuple(parts)
        self.after_restore = after_restore
        self.modules: list[tuple[nn.Module, dict[str, Any]]] = []
        self.tensors: dict[int, _TensorState] = {}
        for module in model.modules():
            state = {key: _copy_value(value) for key, value in module.__dict__.items()}
            self.modules.append((module, state))
            tensors: list[tuple[torch.Tensor | None, bool]] = [
                (t, clone) for t in module.parameters(recurse=False)
            ]
            tensors += [(t, clone or clone_buffers) for t in module.buffers(recurse=False)]
            for tensor, copy in tensors:
                if tensor is None or id(tensor) in self.tensors:
                    continue
                self.tensors[id(tensor)] = _TensorState(
                    tensor=tensor,
                    data=tensor.data,
                    version=tensor_version(tensor),
                    clone=tensor.detach().clone() if copy else None,
                )

    def restore(self) -> None:
        """Put every module attribute and tensor back as it was at the snapshot, then the
        parts, then call ``after_restore``."""
        for module, state in self.modules:
            module.__dict__.clear()
            module.__dict__.update({key: _copy_value(value) for key, value in state.items()})
        for saved in self.tensors.values():
            tensor = saved.tensor
            if tensor.data.data_ptr() != saved.data.data_ptr() or tensor.shape != saved.data.shape:
                tensor.data = saved.data
            if saved.clone is not None:
                with torch.no_grad():
                    tensor.data.copy_(saved.clone)
            elif tensor_version(tensor) != saved.version:
                raise RuntimeError(
                    "internal error: a tensor was changed in place but the snapshot holds no "
                    "copy of it (use ModelSnapshot(model, clone=True) for this path)"
                )
        for part in self.parts:
            part.restore()
        if self.after_restore is not None:
            self.after_restore()


class RunFailure(Exception):
    """The changed model failed to run; ``where`` names the module whose forward failed.

    For changed output shapes ``layers`` holds the convolution or Linear layers that
    make the changed outputs (the ones to put in ``ignored_layers``), and ``where``
    their names."""

    def __init__(
        self,
        where: str,
        error: BaseException | None,
        message: str,
        *,
        layers: tuple[nn.Module, ...] = (),
        shapes_changed: bool = False,
    ) -> None:
        super().__init__(message)
        self.where = where
        self.error = error
        self.layers = layers
        self.shapes_changed = shapes_changed


@dataclass(frozen=True)
class RunSignature:
    """What one forward gives: the output shapes, and each leaf module's last output shape."""

    outputs: list[tuple[int, ...]]
    layers: dict[nn.Module, tuple[int, ...]]


class SignatureRecorder:
    """The :class:`RunSignature` of the last forward of ``model`` that succeeded inside
    :func:`recording_signature`, and how that forward was called."""

    def __init__(self) -> None:
        self.signature: RunSignature | None = None
        self.output: Any = None
        self.call: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def called_as(self, example_inputs: Any) -> bool:
        """Whether that forward was ``run_model(model, example_inputs)``: the very same
        input objects, passed the same way (torch-pruning's tracer may first try
        ``model(*x)`` on a tensor, which runs on unbatched samples)."""
        if self.call is None:
            return False
        args, kwargs = self.call
        if isinstance(example_inputs, dict):
            return (
                not args
                and kwargs.keys() == example_inputs.keys()
                and all(kwargs[k] is v for k, v in example_inputs.items())
            )
        if kwargs:
            return False
        if isinstance(example_inputs, (tuple, list)):
            return len(args) == len(example_inputs) and all(
                a is b for a, b in zip(args, example_inputs, strict=True)
            )
        return len(args) == 1 and args[0] is example_inputs


@contextlib.contextmanager
def recording_signature(model: nn.Module) -> Iterator[SignatureRecorder]:
    """Record the :class:`RunSignature` of the forwards of ``model`` run inside the block
    (the last one that succeeded; a forward that raised leaves nothing)."""
    recorder = SignatureRecorder()
    frames: list[dict[nn.Module, tuple[int, ...]]] = []
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def leaf(module: nn.Module, _inputs: Any, output: Any) -> None:
        found = output_tensors(output)
        if found and frames:
            layers = frames[-1]
            layers.pop(module, None)  # keep call order: a reused module moves to the end
            layers[module] = tuple(found[0].shape)

    def enter(_model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        frames.append({})
        calls.append((args, dict(kwargs)))

    def done(_model: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
        shapes = [tuple(t.shape) for t in output_tensors(output)]
        recorder.signature = RunSignature(shapes, frames[-1])
        recorder.output, recorder.call = output, calls[-1]

    def leave(_model: nn.Module, _args: Any, _kwargs: Any, _output: Any) -> None:
        frames.pop()  # also after a forward that raised: it records nothing
        calls.pop()

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(leaf) for m in leaves]
    handles.append(model.register_forward_pre_hook(enter, with_kwargs=True))
    handles.append(model.register_forward_hook(done, with_kwargs=True))
    handles.append(model.register_forward_hook(leave, with_kwargs=True, always_call=True))
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


def _record_forward(model: nn.Module, example_inputs: Any) -> tuple[Any, dict[nn.Module, Any]]:
    with recording_signature(model) as recorder:
        output = run_model(model, example_inputs)
    assert recorder.signature is not None
    return output, recorder.signature.layers


def signature(model: nn.Module, example_inputs: Any) -> RunSignature:
    """The :class:`RunSignature` of ``model`` (eval mode, no grad; the mode is restored).

    Inputs that do not fit the model give a ``ValueError``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output, layers = _record_forward(model, example_inputs)
    except Exception as error:
        raise ValueError(
            f"example_inputs cannot run through the model: {type(error).__name__}: {error}"
        ) from error
    finally:
        model.train(was_training)
    return RunSignature([tuple(t.shape) for t in output_tensors(output)], layers)


@contextlib.contextmanager
def _active_modules(model: nn.Module) -> Iterator[list[str]]:
    """The names of the modules whose forward is running, outermost first."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []  # after a failure: the modules whose forward raised

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names.get(module, type(module).__name__))

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _failing_modules(model: nn.Module, example_inputs: Any) -> list[str]:
    """Run the failed forward again, tracking the modules whose forward is running: the
    names of those it failed in, outermost first (``[]`` if it ran this time)."""
    with _active_modules(model) as deepest:
        try:
            run_model(model, example_inputs)
        except Exception:
            return list(deepest)
    return []


def _describe(model: nn.Module, path: list[str]) -> str:
    if not path:
        return "the model's forward"
    name = path[-1]
    module = dict(model.named_modules()).get(name)
    kind = type(module).__name__ if module is not None else "?"
    if name == "":
        return f"the forward of the model itself ({kind}), outside any submodule"
    return f"the forward of '{name}' ({kind})"


def check_still_runs(model: nn.Module, example_inputs: Any, expected: RunSignature) -> None:
    """Run ``model`` once; raise :class:`RunFailure` if it fails, if its outputs are not
    finite, or if its output shapes differ from ``expected`` (naming every output that
    changed and the layers that make it, the ones to put in ``ignored_layers``)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                output = run_model(model, example_inputs)  # no hooks: as fast as a forward
            except Exception as error:
                where = _describe(model, _failing_modules(model, example_inputs))
                raise RunFailure(
                    where, error, f"{where} failed: {type(error).__name__}: {error}"
                ) from error
    finally:
        model.train(was_training)
    tensors = output_tensors(output)
    shapes = [tuple(t.shape) for t in tensors]
    if shapes != expected.outputs:
        raise _shapes_changed(model, example_inputs, expected.outputs, shapes, output_paths(output))
    for tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RunFailure("the model's output", None, "the model's output is not finite")


def _shapes_changed(
    model: nn.Module,
    example_inputs: Any,
    before: list[tuple[int, ...]],
    after: list[Any],
    paths: list[str],
) -> RunFailure:
    """The :class:`RunFailure` for changed output shapes: every output that changed (by
    its position, and its path in the output when that says more), and the convolution
    or Linear layers that make each (its ``layers``; ``where``: their names)."""
    unknown = "the layers that make the model's outputs"
    if len(before) != len(after):
        return RunFailure(
            unknown,
            None,
            f"the model's output shapes changed from {before} to {after} (another count)",
            shapes_changed=True,
        )
    names = {m: n for n, m in model.named_modules()}
    producers = output_producers(model, example_inputs)
    changed: list[str] = []
    layers: dict[nn.Module, None] = {}
    for index, (was, now) in enumerate(zip(before, after, strict=True)):
        if was == now:
            continue
        makers = producers[index] if index < len(producers) else []
        layers.update(dict.fromkeys(makers))
        made = ", ".join(f"'{names[m]}' ({type(m).__name__})" for m in makers) or "no layer found"
        path = paths[index] if len(paths) == len(after) else "out"
        at = f" ({path})" if path not in ("out", f"out[{index}]") else ""
        changed.append(f"output {index}{at} from {was} to {tuple(now)} (made by {made})")
    where = ", ".join(f"'{names[m]}'" for m in layers) if layers else unknown
    return RunFailure(
        where,
        None,
        "the model's output shapes changed: " + "; ".join(changed),
        layers=tuple(layers),
        shapes_changed=True,
    )


# ---------------------------------------------------------------------- all or nothing
def shape_signature(model: nn.Module) -> tuple[tuple[int, ...], ...]:
    """The shapes of ``model``'s parameters, in order: changes whenever a layer is pruned.

    Example:
        >>> shape_signature(nn.Linear(3, 2))
        ((2, 3), (2,))
    """
    return tuple(tuple(p.shape) for p in model.parameters())


def _weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor)
    }


def changed_layers(before: dict[str, tuple[int, ...]], model: nn.Module) -> str:
    """``"conv1 (8, 3, 3, 3) -> (5, 3, 3, 3), ..."``: the layers whose weight shape changed."""
    now = _weight_shapes(model)
    changed = [f"{n} {before[n]} -> {now[n]}" for n in before if n in now and now[n] != before[n]]
    if not changed:
        return "no layer"
    shown = ", ".join(changed[:5])
    return shown + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")


def prune_atomically(
    model: nn.Module,
    example_inputs: Any,
    prune: Callable[[], int],
    *,
    who: str,
    hint: str,
    clone: bool = False,
) -> int:
    """Run ``prune()`` (which changes ``model`` in place and returns how many channels
    went), then run ``example_inputs`` through the model. If anything fails, or the
    outputs' shapes changed or are not finite, put the model back exactly as it was
    (module attributes and every tensor; ``clone=True`` for paths that change tensors
    in place) and raise ``ValueError`` naming the failing layer or operation, the
    layers that were changed, and ``hint`` (what to do).
    """
    try:
        expected = signature(model, example_inputs)  # a ValueError if the inputs do not fit
    except ValueError as error:
        raise ValueError(f"{who}: {error}") from error
    before = _weight_shapes(model)
    snapshot = ModelSnapshot(model, clone=clone)
    try:
        removed = prune()
        if removed:
            check_still_runs(model, example_inputs, expected)
    except RunFailure as failure:
        changed = changed_layers(before, model)
        snapshot.restore()
        raise ValueError(
            f"{who} was undone and the model left as it was: after removing channels "
            f"({changed}), {failure}. {hint}"
        ) from failure.error
    except BaseException:
        snapshot.restore()
        raise
    return removed
