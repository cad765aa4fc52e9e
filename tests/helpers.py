"""Small helpers shared by the tests."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.data import DEBIAN_FASHION_MNIST

__all__ = [
    "accuracy",
    "assert_state_unchanged",
    "digits_bn_net",
    "digits_split",
    "masked_copy",
    "needs_fashion_mnist",
    "param_count",
    "recalibrate_bn",
    "snapshot",
]


#: skips a test that needs Fashion-MNIST where it is not installed (CI installs it)
needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"Fashion-MNIST is not installed at {DEBIAN_FASHION_MNIST}: "
    "`apt-get install dataset-fashion-mnist` installs it (.ci/run does)",
)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def assert_state_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


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
