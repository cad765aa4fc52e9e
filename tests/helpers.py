"""Small helpers shared by the tests."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.data import DEBIAN_FASHION_MNIST

__all__ = [
    "ModelState",
    "accuracy",
    "assert_unchanged",
    "budget_tolerance",
    "digits_bn_net",
    "digits_split",
    "masked_copy",
    "model_state",
    "needs_fashion_mnist",
    "param_count",
    "recalibrate_bn",
]


#: skips a test that needs Fashion-MNIST where it is not installed (CI installs it)
needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"Fashion-MNIST is not installed at {DEBIAN_FASHION_MNIST}: "
    "`apt-get install dataset-fashion-mnist` installs it (.ci/run does)",
)


_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


@dataclasses.dataclass(frozen=True)
class ModelState:
    """What :func:`model_state` recorded of a model; compare with :func:`assert_unchanged`."""

    #: a copy of every parameter and buffer (persistent or not, shared ones under each name)
    tensors: dict[str, torch.Tensor]
    #: every module, by name in ``named_modules`` order: its type and plain attributes
    modules: dict[str, tuple[type, dict[str, Any]]]


def model_state(model: nn.Module) -> ModelState:
    """Everything about ``model`` a refused or read-only call must leave as it was.

    A detached copy of every parameter and buffer with its name, and for every module its
    type and its non-tensor attributes: the plain values (numbers, strings, ``None`` and
    tuples or lists of them) in its ``__dict__``, such as ``in_channels``,
    ``out_channels``, ``num_features``, ``groups`` or ``hidden_dim``, and its ``training``
    flag. Take it before the call; :func:`assert_unchanged` compares the model after it.
    """
    tensors = {
        name: tensor.detach().clone()
        for name, tensor in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    modules = {
        name: (
            type(module),
            {k: copy.deepcopy(v) for k, v in vars(module).items() if _plain(v)},
        )
        for name, module in model.named_modules(remove_duplicate=False)
    }
    return ModelState(tensors, modules)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_unchanged(model: nn.Module, before: ModelState, where: object = "") -> None:
    """``model`` is exactly as :func:`model_state` recorded it in ``before``.

    The same modules (names, order, types, plain attributes, ``training`` flags) and the
    same tensors under the same names, with the same dtype, shape and bits (so NaN equals
    NaN, and 0.0 is not -0.0). ``where`` is added to the failure message.
    """
    now = model_state(model)
    assert list(now.modules) == list(before.modules), (where, "modules")
    for name, (kind, attrs) in before.modules.items():
        now_kind, now_attrs = now.modules[name]
        assert now_kind is kind, (where, name, now_kind, kind)
        assert now_attrs == attrs, (where, name, now_attrs, attrs)
    assert list(now.tensors) == list(before.tensors), (where, "tensors")
    for name, value in before.tensors.items():
        tensor = now.tensors[name]
        assert tensor.dtype == value.dtype, (where, name, tensor.dtype, value.dtype)
        assert tensor.shape == value.shape, (where, name, tuple(tensor.shape), tuple(value.shape))
        assert torch.equal(_bits(tensor), _bits(value)), (where, name)


def budget_tolerance(pruner: Any) -> float:
    """A CPMCPruner's tolerance as a fraction of the initial cost of its budget's metric:
    how far a step's reduction may land from its target (0.5 pp, or one unit's cost)."""
    counts = pruner.initial_counts
    return pruner.tolerance / (counts.macs if pruner.metric == "macs" else counts.params)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's digits as 1x8x8 images in [0, 1], shuffled (seed 0): 1400 train, 397 test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def digits_bn_net(seed: int = 0) -> nn.Sequential:
    """Three conv-BN-ReLU blocks (16, 32, 32 channels) and a Linear, for 1x8x8 digits."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    torch.manual_seed(seed)
    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


@torch.no_grad()
def recalibrate_bn(net: nn.Module, x: torch.Tensor) -> None:
    """Running statistics lag behind weights that shrink every step: measure them again."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(x), 100):
        net(x[i : i + 100])
    net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def masked_copy(model: nn.Module, masks: dict) -> nn.Module:
    """A copy of ``model`` with every NNI mask (``{module: {target: mask}}``) multiplied in."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                if mask is not None:
                    getattr(twin.get_submodule(name), target).mul_(mask)
    return twin
