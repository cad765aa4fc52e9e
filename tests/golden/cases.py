"""Pruning cases whose results must stay bit-identical across a refactor of the package.

Every case builds a small model with ``torch.manual_seed(0)``, draws its inputs from a
seeded ``torch.Generator``, prunes (or trains sparsely, then removes the zeros) through
the public API only, and returns plain JSON data: sha256 digests of the resulting
tensors, their shapes (for readable diffs) and the numbers the API reports.

The import paths used here are the ones the layout refactor of issue 12 keeps: the
top-level ``cpmc_plugin`` names, ``cpmc_plugin.models``, ``cpmc_plugin.nni`` and
``torch_pruning``. The same file therefore runs on the commit the golden values were
recorded from and on every commit after it. :func:`run_case` runs one case on one
thread with warnings silenced (their wording is not a pruning result).

Example:
    >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2)})
    True
    >>> digest({"w": torch.zeros(2)}) == digest({"w": torch.zeros(2, 1)})
    False
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import nni
import torch
import torch.nn as nn
import torch_pruning as tp

import cpmc_plugin
from cpmc_plugin import CPMCImportance, CPMCPruner, load_pruned, make_regularizer, save_pruned
from cpmc_plugin.models import CifarVGG, DenseNet, create_model
from cpmc_plugin.nni import CPMCPruner as NNICPMCPruner
from cpmc_plugin.nni import speedup

__all__ = [
    "CASES",
    "GOLDEN_FILE",
    "kernel_dependent",
    "processor",
    "SLOW",
    "digest",
    "recorded_from",
    "run_case",
    "shapes",
    "shapes_in",
    "versions",
]

#: where record.py writes the golden values and the test reads them
GOLDEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pruning.json")

Result = dict[str, Any]
M = TypeVar("M", bound=nn.Module)


# ---------------------------------------------------------------------- digests
def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted keys, and each tensor's shape, dtype and raw bytes."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{list(t.shape)}|{t.dtype}|".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, list[int]]:
    """``{key: shape}``, sorted by key."""
    return {key: list(tensors[key].shape) for key in sorted(tensors)}


def shapes_in(result: Any, where: str = "") -> dict[str, Any]:
    """Every ``"shapes"`` entry of a (nested) result, by its path: compared before digests."""
    found: dict[str, Any] = {}
    if isinstance(result, dict):
        for key, value in result.items():
            path = f"{where}/{key}" if where else str(key)
            if key == "shapes":
                found[path] = value
            else:
                found.update(shapes_in(value, path))
    return found


def _tensors(tensors: Mapping[str, torch.Tensor]) -> Result:
    return {"shapes": shapes(tensors), "digest": digest(tensors)}


@torch.no_grad()
def _model_result(model: nn.Module, x: torch.Tensor) -> Result:
    """The state dict and the eval-mode output on ``x``."""
    was_training = model.training
    model.eval()
    out = model(x)
    model.train(was_training)
    return {"state": _tensors(model.state_dict()), "output": _tensors({"y": out})}


def processor() -> str:
    """The CPU model: float kernels (oneDNN's, BLAS's) pick their blocking per model, so
    two CPUs with the same instruction set can round a forward differently."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_dependent(name: str, path: str) -> bool:
    """Whether the digest at ``path`` of case ``name`` holds values computed by float
    kernels: every output, and whatever a case that trains computed. The pruning itself
    (channels, histories, reports, the sliced weights of a case that does not train) is
    exact on every CPU."""
    return path.endswith("/digest") and (path.startswith("output/") or name.startswith("reg/"))


def versions() -> dict[str, str]:
    """The libraries (and CPU kernels) a bit-identical result depends on."""
    return {
        "torch": torch.__version__,
        "torch_pruning": str(tp.__version__),
        "nni": str(nni.__version__),
        "python": ".".join(platform.python_version_tuple()[:2]),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


# ---------------------------------------------------------------------- models and data
def _inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


X = _inputs(1, 3, 32, 32)


@torch.no_grad()
def _randomize_norms(model: M, seed: int = 2) -> M:
    """Seeded BN scales, shifts and statistics (fresh ones are 1/0, which hides folding)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.weight is not None and m.bias is not None and m.running_mean is not None
            assert m.running_var is not None
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.25)
            m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_norms(create_model("resnet20", num_classes=10)).eval()


def _densenet() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_norms(DenseNet(depth=10, growth=6, num_classes=10)).eval()


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return _randomize_norms(CifarVGG((16, "M", 32, "M", 32, 32), num_classes=10)).eval()


def _conv_bn_net() -> nn.Sequential:
    """conv-BN-ReLU x3, global pool, Linear: the sparse trainers' model (16x16 inputs)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    return _randomize_norms(net)


def _classifier(model: nn.Module) -> nn.Module:
    return model.get_submodule("classifier")


def _history(history: Any) -> list[list[Any]]:
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history]


def _layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv/linear layer (readable next to the digests)."""
    return {
        name: int(m.weight.shape[0])
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


# ---------------------------------------------------------------------- CPMCPruner
def _cpmc(
    build: Callable[[], nn.Module],
    steps: int = 1,
    ratio_dict: dict[str, float] | None = None,
    **options: Any,
) -> Callable[[], Result]:
    """CPMCPruner; ``ratio_dict`` is ``pruning_ratio_dict`` by attribute name of the model."""

    def case() -> Result:
        model = build()
        kwargs = dict(options)
        if ratio_dict is not None:
            kwargs["pruning_ratio_dict"] = {getattr(model, k): v for k, v in ratio_dict.items()}
        pruner = CPMCPruner(
            model, X, ignored_layers=[_classifier(model)], iterative_steps=steps, **kwargs
        )
        reports = []
        for _ in range(steps):
            pruner.step()
            reports.append(pruner.report().to_dict())
        return {
            **_model_result(model, X),
            "channels": _layer_channels(model),
            "reports": reports,
            "history": _history(pruner.pruning_history()),
        }

    return case


# ---------------------------------------------------------------------- CPMCImportance
def _meta(build: Callable[[], nn.Module]) -> Callable[[], Result]:
    def case() -> Result:
        model = build()
        pruner = tp.pruner.MetaPruner(
            model,
            X,
            importance=CPMCImportance(example_inputs=X),
            global_pruning=True,
            pruning_ratio=0.4,
            ignored_layers=[_classifier(model)],
        )
        pruner.step()
        return {
            **_model_result(model, X),
            "channels": _layer_channels(model),
            "history": _history(pruner.pruning_history()),
        }

    return case


def _scores_resnet() -> Result:
    """The raw per-group scores of a standalone CPMCImportance over all conv/linear groups."""
    model = _resnet()
    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=X)
    importance = CPMCImportance(example_inputs=X)
    scores = {}
    for i, group in enumerate(
        graph.get_all_groups(
            ignored_layers=[_classifier(model)], root_module_types=[nn.Conv2d, nn.Linear]
        )
    ):
        root = names[group[0].dep.target.module]
        with torch.no_grad():
            scores[f"{i:03d}:{root}"] = importance(group)
    return _tensors(scores)


# ---------------------------------------------------------------------- NNI
def _resnet_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _nni(mode: str) -> Callable[[], Result]:
    def case() -> Result:
        model = _resnet()
        options: dict[str, Any] = {}
        caps: dict[str, float] = {}
        if mode == "global":
            config: list[dict[str, Any]] = [
                {
                    "op_types": ["Conv2d"],
                    "sparse_ratio": 0.5,
                    "global_group_id": "g",
                    "max_sparse_ratio": 0.8,
                }
            ]
        elif mode == "layer":
            config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}]
        else:  # a flops budget; the caps bind: uncapped, these layers lose 9/16 and 5/64
            convs = _resnet_convs(model)
            stem = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]  # tied
            inner = ["layer3.1.conv1", "layer3.2.conv1"]
            caps = {n: 0.25 if n in stem else 0.03125 if n in inner else 0.6 for n in convs}
            config = [
                {"op_names": [n for n in convs if caps[n] == ratio], "max_sparse_ratio": ratio}
                for ratio in sorted(set(caps.values()))
            ]
            options["flops_reduction"] = 0.4
        pruner = NNICPMCPruner(model, config, example_inputs=X, **options)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        flat = {
            f"{name}.{target}": mask
            for name, targets in masks.items()
            for target, mask in targets.items()
            if mask is not None
        }
        masked = {
            name: int((~targets["weight"].flatten(1).any(1)).sum())
            for name, targets in sorted(masks.items())
            if targets.get("weight") is not None and targets["weight"].dim() > 1
        }
        for name, cap in caps.items():  # independent of the golden values
            layer = model.get_submodule(name)
            assert isinstance(layer, nn.Conv2d)
            out = layer.out_channels
            assert masked.get(name, 0) <= cap * out, f"{name}: {masked[name]} of {out} > {cap}"
        speedup(model, masks, X)
        return {
            "masks": _tensors(flat),
            "masked_channels": masked,
            **_model_result(model, X),
            "channels": _layer_channels(model),
        }

    return case


# ---------------------------------------------------------------------- regularizers
_REGULARIZERS: dict[str, dict[str, Any]] = {
    "oicsr": {"strength": 0.12},
    "ssr-l21": {"strength": 0.15, "rho": 0.5},
    "ssr-l20": {"keep": 0.5, "rho": 0.5},
    "bn-fista": {"strength": 1.0},
    "bn-fista-m0": {"strength": 1.0, "momentum": 0.0},
}
_LR = 0.1


def _regularizer(name: str) -> Callable[[], Result]:
    def case() -> Result:
        net = _conv_bn_net()
        x = _inputs(2, 3, 16, 16, seed=1)
        g = torch.Generator().manual_seed(3)
        batches = [
            (torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(5)
        ]
        method = "bn-fista" if name.startswith("bn-fista") else name
        ignored = [net[11]] if method != "bn-fista" else None
        reg = make_regularizer(method, net, x, ignored_layers=ignored, **_REGULARIZERS[name])
        optimizer = torch.optim.SGD(net.parameters(), lr=_LR)
        losses, zeros = [], []
        net.train()
        for images, labels in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            zeros.append(int(reg.proximal_step(_LR)))
            losses.append(float(loss))
        reg.finalize()
        net.eval()
        finalized = _tensors(net.state_dict())
        # the legacy removal names (the protocol has no removal method before issue 12)
        removed = (
            reg.prune_zero_channels(x)  # type: ignore[attr-defined]
            if method == "bn-fista"
            else reg.prune_zero_groups()  # type: ignore[attr-defined]
        )
        return {
            "losses": losses,
            "zeros_per_step": zeros,
            "finalized": finalized,
            "removed": int(removed),
            **_model_result(net, x),
            "channels": _layer_channels(net),
        }

    return case


# ---------------------------------------------------------------------- save / load
def _save_load() -> Result:
    model = _resnet()
    pruner = CPMCPruner(model, X, flops_reduction=0.3, ignored_layers=[_classifier(model)])
    pruner.step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pruned.pt")
        save_pruned(model, path, pruner.pruning_history())
        again = load_pruned(_resnet(), path, X)
    with torch.no_grad():
        same = bool(torch.equal(again.eval()(X), model.eval()(X)))
    return {**_model_result(again, X), "same_output_as_saved": same}


# ---------------------------------------------------------------------- the cases
#: The CLI's checkpoint replay and training loop (the plan's "cli/checkpoint_build" and
#: "training/fit") are left out: they live at paths the refactor moves.
CASES: dict[str, Callable[[], Result]] = {
    "cpmc/resnet20/flops0.5": _cpmc(_resnet, flops_reduction=0.5),
    "cpmc/resnet20/params0.4/steps2": _cpmc(_resnet, steps=2, params_reduction=0.4),
    "cpmc/densenet10/flops0.4": _cpmc(_densenet, flops_reduction=0.4),
    "cpmc/vgg-small/flops0.5/round_to4": _cpmc(_vgg, flops_reduction=0.5, round_to=4),
    "cpmc/resnet20/isomorphic": _cpmc(_resnet, flops_reduction=0.5, isomorphic=True),
    "cpmc/resnet20/pruning_ratio_dict": _cpmc(
        _resnet, flops_reduction=0.4, ratio_dict={"layer1": 0.2}
    ),
    "meta/resnet20": _meta(_resnet),
    "meta/densenet10": _meta(_densenet),
    "scores/resnet20": _scores_resnet,
    "nni/resnet20/global": _nni("global"),
    "nni/resnet20/layer": _nni("layer"),
    "nni/resnet20/flops0.4/capped": _nni("flops"),
    **{f"reg/{name}": _regularizer(name) for name in _REGULARIZERS},
    "io/save_load_pruned": _save_load,
}

#: cases that take over ~5 s on one thread (measured by record.py)
SLOW: frozenset[str] = frozenset()


def run_case(name: str) -> Result:
    """Run one case on one thread, warnings silenced; return JSON-normalized data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = CASES[name]()
    finally:
        torch.set_num_threads(threads)
    normalized: Result = json.loads(json.dumps(result))
    return normalized


def recorded_from() -> dict[str, str]:
    """Where the package under test comes from (record.py stores it)."""
    return {"cpmc_plugin_file": os.path.abspath(cpmc_plugin.__file__ or "")}
