"""A pytest plugin that runs torch-pruning's own tests with CPMC in place of the host's parts.

Loaded by :mod:`host_test_suite` as ``-p _host_substitute`` (with ``benchmarks/`` on
``PYTHONPATH``). The environment selects what it does:

- ``CPMC_HOST_MODE``: ``host`` (substitute nothing, only record), ``importance``
  (every host importance class becomes :class:`cpmc_plugin.CPMCImportance`; the host's
  pruners stay and are only handed the example inputs CPMC needs), or ``pruner``
  (importances as in ``importance`` and every ``MetaPruner``-family pruner becomes
  :class:`cpmc_plugin.CPMCPruner` through the adapter of :func:`_pruner_class`), or
  ``pruner-keep-outputs`` (as ``pruner``, and the layers that produce the model's
  outputs, found by :func:`output_layers`, are added to ``ignored_layers``: CPMCPruner
  refuses to change a model's output shapes, which many host tests do).
- ``CPMC_HOST_RECORD``: a JSON-lines file that receives one record per collected item,
  test outcome (with the exception, its innermost frame and its innermost
  ``cpmc_plugin`` frame) and option translation.
- ``CPMC_HOST_OFFLINE``: ``1`` makes torchvision's pretrained weights a random
  initialisation of the same architecture, so tests written with ``pretrained=True``
  run without a network; the same in every mode.

The adapter translates the host's channel ratio ``r`` (``pruning_ratio`` or the
deprecated ``ch_sparsity``) into ``flops_reduction = 1 - (1 - r)**2``, the MACs a
uniform channel cut of ``r`` removes from a layer whose input and output are both cut.
Options CPMCPruner takes are passed on; options left at the host's default are
dropped; every other option the test gave is passed on too, so that CPMCPruner
accepts or refuses it itself.
"""

from __future__ import annotations

import inspect
import json
import os
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_pruning as tp

import cpmc_plugin
from cpmc_plugin import CPMCImportance, CPMCPruner
from cpmc_plugin.torch_pruning.options import HOST_OPTIONS

__all__ = [
    "HOST_IMPORTANCES",
    "HOST_PRUNERS",
    "MODES",
    "flops_from_ratio",
    "install",
    "output_layers",
]

#: host importance classes replaced by CPMCImportance (names in ``tp.importance``)
HOST_IMPORTANCES = (
    "GroupMagnitudeImportance",
    "MagnitudeImportance",
    "BNScaleImportance",
    "LAMPImportance",
    "FPGMImportance",
    "RandomImportance",
    "GroupTaylorImportance",
    "TaylorImportance",
    "OBDCImportance",
    "GroupHessianImportance",
    "HessianImportance",
    "ActivationImportance",
)
#: host pruner classes replaced (names in ``tp.pruner``; three are aliases of BasePruner)
HOST_PRUNERS = (
    "BasePruner",
    "MetaPruner",
    "MagnitudePruner",
    "GroupNormPruner",
    "BNScalePruner",
    "GrowingRegPruner",
)
#: host-criterion methods some tests call; they have no CPMC meaning and are recorded no-ops
HOST_CRITERION_CALLS = (
    "zero_grad",
    "accumulate_grad",
    "step",
    "_prepare_model",
    "_rm_hooks",
    "_clear_buffer",
)
#: CPMCPruner keywords the adapter passes on as they are
PASSED_ON = frozenset(
    {
        "iterative_steps",
        "ignored_layers",
        "max_pruning_ratio",
        "round_to",
        *HOST_OPTIONS,  # the host options CPMCPruner accepts
    }
)
_CPMC_NORMALIZERS = frozenset({"max-min", "l2", "max", None})
#: what CPMC_HOST_MODE may say
MODES = ("host", "importance", "pruner", "pruner-keep-outputs")

_MODE = os.environ.get("CPMC_HOST_MODE", "host")
_RECORD = os.environ.get("CPMC_HOST_RECORD")
_current = {"nodeid": "<collection>"}


def _emit(record: dict[str, Any]) -> None:
    if not _RECORD:
        return
    with open(_RECORD, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record, default=repr) + "\n")


def _brief(value: Any) -> str:
    """A short description of an option value (shapes, not tensor contents)."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, torch.nn.Module):
        return type(value).__name__
    if isinstance(value, (list, tuple)):
        items = ", ".join(_brief(v) for v in value[:3])
        more = f", ... ({len(value)} items)" if len(value) > 3 else ""
        return f"[{items}{more}]"
    if isinstance(value, dict):
        items = ", ".join(f"{_brief(k)}: {_brief(v)}" for k, v in list(value.items())[:3])
        more = f", ... ({len(value)} items)" if len(value) > 3 else ""
        return "{" + items + more + "}"
    return repr(value)[:80]


def _note(kind: str, option: str, value: Any, note: str) -> None:
    """Record how the substitution handled one option or call of the current test."""
    _emit(
        {
            "event": "option",
            "nodeid": _current["nodeid"],
            "kind": kind,
            "option": option,
            "value": _brief(value),
            "note": note,
        }
    )


def flops_from_ratio(ratio: float) -> float:
    """The MACs fraction a uniform channel cut of ``ratio`` removes from an interior layer.

    Example:
        >>> flops_from_ratio(0.5)
        0.75
    """
    return 1.0 - (1.0 - float(ratio)) ** 2


def _explicit(host: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The arguments the caller gave, bound to the host signature (defaults not applied)."""
    return inspect.signature(host).bind(*args, **kwargs)


def _is_default(host: Callable[..., Any], name: str, value: Any) -> bool:
    parameter = inspect.signature(host).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return False
    default = parameter.default
    try:
        return bool(value is default or value == default)
    except Exception:  # tensors and the like: not a default
        return False


# ---------------------------------------------------------------------- importances
def _importance_class(name: str, host_cls: type) -> type:
    """A CPMCImportance subclass named like ``host_cls`` that takes its arguments."""

    def __init__(self: CPMCImportance, *args: Any, **kwargs: Any) -> None:
        bound = _explicit(host_cls, args, kwargs)
        options: dict[str, Any] = {}
        for option, value in bound.arguments.items():
            if option == "p":
                options["p"] = value
                _note("passed", f"{name}.p", value, "CPMC norm degree")
            elif option == "normalizer" and value in _CPMC_NORMALIZERS:
                options["normalizer"] = value
                _note("passed", f"{name}.normalizer", value, "CPMC normalizer")
            else:
                _note(
                    "dropped", f"{name}.{option}", value, "host-criterion option, no CPMC meaning"
                )
        CPMCImportance.__init__(self, **options)

    def _ignored_call(method: str) -> Callable[..., None]:
        def call(self: CPMCImportance, *args: Any, **kwargs: Any) -> None:
            _note("ignored-call", f"{name}.{method}()", "", "host-criterion call, no CPMC meaning")

        return call

    namespace: dict[str, Any] = {"__init__": __init__, "__module__": __name__}
    for method in HOST_CRITERION_CALLS:
        if hasattr(host_cls, method):
            namespace[method] = _ignored_call(method)
    return type(name, (CPMCImportance,), namespace)


def _give_inputs(importance: Any, example_inputs: Any) -> None:
    """Hand CPMCImportance the example inputs a host pruner was given (it needs them)."""
    if isinstance(importance, CPMCImportance) and importance.example_inputs is None:
        importance.example_inputs = example_inputs
        _note("translated", "example_inputs", "", "given to CPMCImportance")


def _host_pruner_class(name: str, host_cls: type) -> type:
    """The host pruner, unchanged except that it hands CPMCImportance its example inputs."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = _explicit(host_cls.__init__, (self, *args), kwargs)
        _give_inputs(bound.arguments.get("importance"), bound.arguments.get("example_inputs"))
        host_cls.__init__(self, *args, **kwargs)

    return type(name, (host_cls,), {"__init__": __init__, "__module__": __name__})


# ---------------------------------------------------------------------- pruners
def output_layers(model: torch.nn.Module, example_inputs: Any) -> list[torch.nn.Module]:
    """The conv/linear layers nearest to the model's outputs on every path back from them.

    Found by walking the autograd graph of one forward back from each output tensor
    and stopping at the first tensor that a conv or linear layer produced.
    """
    produced: dict[Any, torch.nn.Module] = {}

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            produced[output.grad_fn] = module

    layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if isinstance(example_inputs, dict):
                outputs = model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                outputs = model(*example_inputs)
            else:
                outputs = model(example_inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    stack = [t.grad_fn for t in tp.utils.flatten_as_list(outputs) if t.grad_fn is not None]
    seen, found = set(), []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def _pruner_class(name: str, host_cls: type) -> type:
    """A CPMCPruner subclass named like ``host_cls`` that takes the host's arguments."""

    def __init__(self: CPMCPruner, *args: Any, **kwargs: Any) -> None:
        bound = _explicit(host_cls.__init__, (self, *args), kwargs).arguments
        bound.pop("self")
        model = bound.pop("model")
        example_inputs = bound.pop("example_inputs")
        importance = bound.pop("importance", None)
        _give_inputs(importance, example_inputs)
        ratio = bound.pop("pruning_ratio", None)
        sparsity = bound.pop("ch_sparsity", None)
        if sparsity is not None:
            ratio = sparsity
        if ratio is None:
            ratio = inspect.signature(host_cls.__init__).parameters["pruning_ratio"].default
        flops = flops_from_ratio(ratio)
        _note("translated", "pruning_ratio", ratio, f"flops_reduction={flops:.4f}")
        options: dict[str, Any] = {}
        if _MODE == "pruner-keep-outputs":
            ignored = list(bound.get("ignored_layers") or [])
            added = [m for m in output_layers(model, example_inputs) if m not in ignored]
            bound["ignored_layers"] = ignored + added
            _note("added", "ignored_layers", added, "the layers that produce the outputs")
        for option, value in bound.items():
            if option == "global_pruning":
                _note("dropped", option, value, "CPMCPruner always ranks globally")
            elif option in PASSED_ON:
                options[option] = value
                _note("passed", option, value, "CPMCPruner option")
            elif _is_default(host_cls.__init__, option, value):
                _note("dropped", option, value, "host default, no effect")
            else:
                options[option] = value
                _note("passed-unknown", option, value, "given by the test; CPMCPruner decides")
        CPMCPruner.__init__(
            self, model, example_inputs, importance, flops_reduction=flops, **options
        )

    def step(self: CPMCPruner, interactive: bool = False) -> Any:
        """CPMCPruner's step, then a record of the budget it reached."""
        if not interactive:
            result = CPMCPruner.step(self)
            _record_budget(self)
            return result
        groups = CPMCPruner.step(self, interactive=True)

        def watched() -> Any:
            yield from groups
            _record_budget(self)  # the caller pruned every group it was given

        return watched()

    namespace = {"__init__": __init__, "step": step, "__module__": __name__}
    return type(name, (CPMCPruner,), namespace)


def _record_budget(pruner: CPMCPruner) -> None:
    """Record the reduction reached after a step against the step's target."""
    step = min(pruner.current_step, pruner.iterative_steps)
    record: dict[str, Any] = {"event": "budget", "nodeid": _current["nodeid"], "step": step}
    try:
        report = pruner.report()
        macs = pruner.metric == "macs"
        before = report.macs_before if macs else report.params_before
        reached = report.macs_reduction if macs else report.params_reduction
        target = 1.0 - pruner.target_cost(step) / before
        grain = getattr(pruner, "_granularity", 0.0) or 0.0
        record.update(
            metric=pruner.metric,
            target=round(target, 6),
            reached=round(reached, 6),
            off_pp=round(100 * (reached - target), 3),
            grain_pp=round(100 * grain / before, 3),
        )
    except Exception as error:  # an observer: the test itself decides the outcome
        record["error"] = f"{type(error).__name__}: {error}"[:300]
    _emit(record)


# ---------------------------------------------------------------------- offline weights
def _offline_weights() -> None:
    """Make torchvision's pretrained weights a random init of the same architecture."""
    import torchvision.models as tvm
    from torchvision.models._api import WeightsEnum

    def get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        for model_name in tvm.list_models():
            if tvm.get_model_weights(model_name) is type(self):
                options = {}
                if "categories" in self.meta:
                    options["num_classes"] = len(self.meta["categories"])
                _note("offline", "weights", self, f"random init of {model_name}")
                # the same weights every time they are asked for (tests load them twice)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(zlib.crc32(str(self).encode()))
                    return tvm.get_model(model_name, weights=None, **options).state_dict()
        raise RuntimeError(f"offline weights: no torchvision builder owns {self}")

    WeightsEnum.get_state_dict = get_state_dict  # type: ignore[method-assign]


def install(mode: str) -> None:
    """Replace the host's importance and/or pruner classes for ``mode``."""
    if mode not in MODES:
        raise ValueError(f"CPMC_HOST_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "host":
        return
    for name in HOST_IMPORTANCES:
        host_cls = getattr(tp.importance, name, None)
        if host_cls is not None:
            setattr(tp.importance, name, _importance_class(name, host_cls))
    make = _host_pruner_class if mode == "importance" else _pruner_class
    for name in HOST_PRUNERS:
        host_cls = getattr(tp.pruner, name, None)
        if host_cls is not None:
            substitute = make(name, host_cls)
            setattr(tp.pruner, name, substitute)
            setattr(tp.pruner.algorithms, name, substitute)


# ---------------------------------------------------------------------- pytest hooks
def pytest_configure(config: pytest.Config) -> None:
    """Install the substitution before any test module is imported."""
    install(_MODE)
    _emit({"event": "env", "mode": _MODE, "cpmc_plugin": cpmc_plugin.__file__})
    if os.environ.get("CPMC_HOST_OFFLINE") == "1":
        _offline_weights()


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Attribute option records made while importing a module to that module."""
    _current["nodeid"] = f"{collector.nodeid}::<module>"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Record modules that hold no test function (scripts run at import) as one item."""
    if not isinstance(report.nodeid, str) or not report.nodeid.endswith(".py"):
        return
    if report.failed or not report.result:
        outcome = "failed" if report.failed else "passed"
        _emit({"event": "result", "nodeid": f"{report.nodeid}::<module>", "outcome": outcome})
    for item in report.result:
        if isinstance(item, pytest.Item):
            _emit({"event": "collected", "nodeid": item.nodeid})


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    """Note which test runs (a timed-out file then shows where it stopped)."""
    _current["nodeid"] = nodeid
    _emit({"event": "start", "nodeid": nodeid})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record each test's outcome (setup and teardown only when they fail)."""
    if report.when == "call" or report.failed or report.skipped:
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        _emit(
            {
                "event": "result",
                "nodeid": report.nodeid,
                "when": report.when,
                "outcome": outcome,
                "duration": round(report.duration, 2),
            }
        )


def _frame(entry: traceback.FrameSummary) -> str:
    return f"{Path(entry.filename).name}:{entry.lineno} in {entry.name}"


def pytest_exception_interact(node: Any, call: pytest.CallInfo[Any], report: Any) -> None:
    """Record the exception of a failed test or module: text, innermost frames."""
    excinfo = call.excinfo
    if excinfo is None:
        return
    frames = traceback.extract_tb(excinfo.tb)
    cpmc = [f for f in frames if f"{os.sep}cpmc_plugin{os.sep}" in f.filename]
    host = [
        f
        for f in frames
        if f"{os.sep}torch_pruning{os.sep}" in f.filename
        and f"{os.sep}cpmc_plugin{os.sep}" not in f.filename
    ]
    text = str(excinfo.value).strip().splitlines()
    nodeid = node.nodeid if isinstance(node, pytest.Item) else f"{node.nodeid}::<module>"
    _emit(
        {
            "event": "exception",
            "nodeid": nodeid,
            "error": f"{excinfo.typename}: {text[0] if text else ''}"[:400],
            "last_frame": _frame(frames[-1]) if frames else None,
            "cpmc_frame": _frame(cpmc[-1]) if cpmc else None,
            "host_frame": _frame(host[-1]) if host else None,
            "test_frame": next(
                (_frame(f) for f in reversed(frames) if Path(f.filename).name.startswith("test_")),
                None,
            ),
        }
    )
