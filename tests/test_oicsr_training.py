"""OICSR sparse training on a real task (sklearn digits): groups reach zero and prune cleanly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import OICSRRegularizer

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = sklearn_datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def small_net() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def train_epoch(net, x, y, optimizer, reg=None) -> None:
    net.train()
    for i in range(0, len(x), 50):
        optimizer.zero_grad()
        F.cross_entropy(net(x[i : i + 50]), y[i : i + 50]).backward()
        optimizer.step()
        if reg is not None:
            reg.proximal_step(optimizer.param_groups[0]["lr"])


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


def test_sparse_training_zeroes_groups_that_then_prune_without_changing_outputs(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    net = small_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        train_epoch(net, x_train, y_train, optimizer)
    assert accuracy(net, x_test, y_test) > 0.95

    reg = OICSRRegularizer(net, x_train[:1], lam=1e-2, ignored_layers=[net[-1]])
    assert reg.num_groups == 16 + 32 + 32
    sparse_optimizer = torch.optim.SGD(net.parameters(), lr=0.02)
    for _ in range(16):
        train_epoch(net, x_train, y_train, sparse_optimizer, reg)
    zero = int((reg.group_norms() == 0).sum())
    assert zero >= 0.15 * reg.num_groups  # measured: 21 of 80 groups at exact zero
    recalibrate_bn(net, x_train)
    assert accuracy(net, x_test, y_test) > 0.85  # measured 0.93 (no fine-tune yet)

    params_before = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        before = net(x_test)
    removed = reg.prune_zero_groups()
    assert removed == zero
    assert sum(p.numel() for p in net.parameters()) < params_before
    assert reg.num_groups == 80 - zero and bool((reg.group_norms() > 0).all())
    with torch.no_grad():
        after = net(x_test)
    # tolerance: float32 round-off only; the removed channels contributed exact zeros
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_prune_zero_groups_refuses_a_bad_tolerance() -> None:
    net = small_net()
    reg = OICSRRegularizer(net, torch.randn(1, 1, 8, 8), ignored_layers=[net[-1]])
    with pytest.raises(ValueError, match=r"tolerance must be a finite number >= 0"):
        reg.prune_zero_groups(-1.0)
