"""OICSR sparse training on a real task (sklearn digits): groups reach zero and prune cleanly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpmc_plugin import OICSRRegularizer
from tests.helpers import accuracy, digits_bn_net, digits_split, recalibrate_bn

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return digits_split()


def train_epoch(net, x, y, optimizer, reg=None) -> None:
    net.train()
    for i in range(0, len(x), 50):
        optimizer.zero_grad()
        F.cross_entropy(net(x[i : i + 50]), y[i : i + 50]).backward()
        optimizer.step()
        if reg is not None:
            reg.proximal_step(optimizer.param_groups[0]["lr"])


def test_sparse_training_zeroes_groups_that_then_prune_without_changing_outputs(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    net = digits_bn_net()
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
    net = digits_bn_net()
    reg = OICSRRegularizer(net, torch.randn(1, 1, 8, 8), ignored_layers=[net[-1]])
    with pytest.raises(ValueError, match=r"tolerance must be a finite number >= 0"):
        reg.prune_zero_groups(-1.0)
