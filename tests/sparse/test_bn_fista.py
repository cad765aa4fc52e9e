"""BN-FISTA: FISTA steps by hand, exact zeros on digits, exact channel removal, bad input."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import BNFISTARegularizer
from tests.archs import ARCHS, Arch, build, classifier_of
from tests.helpers import (
    accuracy,
    assert_unchanged,
    digits_bn_net,
    digits_split,
    model_state,
    param_count,
    recalibrate_bn,
)

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("one_thread")

_BatchNorm = nn.modules.batchnorm._BatchNorm

# FISTA's momentum sequence: t1 = 1, t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,
# m_k = (t_k - 1) / t_{k+1} (so m_1 = 0: the first step does not extrapolate)
T2 = (1.0 + math.sqrt(5.0)) / 2.0  # 1.6180339887
T3 = (1.0 + math.sqrt(1.0 + 4.0 * T2**2)) / 2.0  # (1 + sqrt(11.4721360)) / 2 = 2.1935270853
M2 = (T2 - 1.0) / T3  # 0.6180339887 / 2.1935270853 = 0.2817535251


# ---------------------------------------------------------------- helpers
def one_bn_net() -> nn.Sequential:
    """conv (1->3, 1x1) -> BN(3) -> ReLU -> conv (3->2, 1x1): gamma/beta set by hand."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)
    )
    set_bn(net[1], gamma=[1.0, -0.25, 0.5], beta=[0.3, -2.0, 0.0])
    return net


@torch.no_grad()
def set_bn(bn: nn.Module, gamma: list[float], beta: list[float]) -> None:
    bn.weight.copy_(torch.tensor(gamma))
    bn.bias.copy_(torch.tensor(beta))


@torch.no_grad()
def randomize_stats(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@torch.no_grad()
def zero_some_scales(model: nn.Module, seed: int = 1) -> int:
    """Set ~30% of every BN's gammas to exactly 0 and re-draw betas (half the zeroed
    channels get a negative beta, so that a ReLU after them outputs exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            zero = torch.rand(m.num_features, generator=g) < 0.3
            m.weight[zero] = 0.0
            m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            negative = zero & (torch.rand(m.num_features, generator=g) < 0.5)
            m.bias[negative] = -m.bias[negative].abs() - 0.01
            total += int(zero.sum())
    return total


def prune_quietly(reg: BNFISTARegularizer, x: Any) -> tuple[int, list[str]]:
    """``prune_zero_channels``, returning the removed count and any warnings' text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        removed = reg.prune_zero_channels(x)
    return removed, [str(w.message) for w in caught]


# ---------------------------------------------------------------- FISTA by hand
def test_first_step_soft_thresholds_without_extrapolation() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0)
    zero = reg.proximal_step(lr=0.5)  # threshold lr * lam = 0.5
    # gamma [1, -0.25, 0.5] -> [1 - 0.5, 0 (|-0.25| < 0.5), 0 (0.5 = t)]
    assert torch.equal(net[1].weight.data, torch.tensor([0.5, 0.0, 0.0]))
    # beta [0.3, -2, 0] -> [0 (0.3 < 0.5), -(2 - 0.5), 0]
    assert torch.equal(net[1].bias.data, torch.tensor([0.0, -1.5, 0.0]))
    # zero scales (the removable channels): channels 1 and 2
    assert zero == 2 and reg.num_zero_channels == 2


def test_second_step_extrapolates_with_fistas_coefficient_and_finalize_loads_x() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0)
    reg.proximal_step(lr=0.5)  # x1: gamma [0.5, 0, 0], beta [0, -1.5, 0] (see above)
    # stand-in for an optimizer step: the point y the next prox is taken at
    set_bn(net[1], gamma=[2.0, 0.25, -1.0], beta=[0.3, -1.5, 0.4])
    zero = reg.proximal_step(lr=0.5)
    # x2 = soft(y, 0.5): gamma [1.5, 0, -0.5], beta [0, -1.0, 0]
    # model holds x2 + m2 (x2 - x1) with m2 = 0.2817535251:
    # gamma: 1.5 + m2 * (1.5 - 0.5) = 1.7817535, 0, -0.5 + m2 * (-0.5 - 0) = -0.6408768
    # beta:  0, -1.0 + m2 * (-1.0 + 1.5) = -0.8591232, 0
    assert math.isclose(M2, 0.2817535251, rel_tol=1e-9)
    torch.testing.assert_close(
        net[1].weight.data, torch.tensor([1.7817535, 0.0, -0.6408768]), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        net[1].bias.data, torch.tensor([0.0, -0.8591232, 0.0]), rtol=0, atol=1e-6
    )
    assert zero == 1  # x2's scale is zero at channel 1 only (not the extrapolated point's)
    reg.finalize()
    assert torch.equal(net[1].weight.data, torch.tensor([1.5, 0.0, -0.5]))
    assert torch.equal(net[1].bias.data, torch.tensor([0.0, -1.0, 0.0]))
    assert (net[1].weight == 0).tolist() == [False, True, False]


def test_finalize_restarts_fista() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0)
    reg.proximal_step(lr=0.5)
    reg.proximal_step(lr=0.5)
    reg.finalize()
    set_bn(net[1], gamma=[3.0, -3.0, 0.1], beta=[1.0, 1.0, 1.0])
    reg.proximal_step(lr=0.5)  # first step again: no extrapolation, the model holds soft(y)
    assert torch.equal(net[1].weight.data, torch.tensor([2.5, -2.5, 0.0]))
    assert torch.equal(net[1].bias.data, torch.tensor([0.5, 0.5, 0.5]))


def one_scale_net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 1, 1))
    set_bn(net[1], gamma=[1.0], beta=[0.0])
    return net


@pytest.mark.parametrize("restart", [True, False])
def test_an_extrapolation_that_overshoots_restarts_fistas_sequence(restart: bool) -> None:
    net = one_scale_net()
    reg = BNFISTARegularizer(net, lam=0.0, shift=False, restart=restart)  # x = v
    gamma = net[1].weight
    reg.proximal_step(lr=1.0)  # x1 = y1 = 1
    with torch.no_grad():
        gamma.fill_(2.0)  # the optimizer's step
    reg.proximal_step(lr=1.0)  # (y1 - x2)(x2 - x1) = (1 - 2)(2 - 1) < 0: no restart
    y2 = 2.0 + M2 * (2.0 - 1.0)  # 2.2817535
    assert float(gamma) == pytest.approx(y2)
    with torch.no_grad():
        gamma.fill_(2.1)  # the gradient pulled back inside the extrapolation
    reg.proximal_step(lr=1.0)
    # (y2 - x3)(x3 - x2) = (2.2818 - 2.1)(2.1 - 2) = 0.018 > 0: restart, so m = 0
    t4 = (1.0 + math.sqrt(1.0 + 4.0 * T3**2)) / 2.0  # 2.7183 without a restart
    no_restart = 2.1 + (T3 - 1.0) / t4 * (2.1 - 2.0)  # 2.1439
    assert float(gamma) == pytest.approx(2.1 if restart else no_restart)


def test_fixed_momentum_extrapolation() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0, momentum=0.5)
    reg.proximal_step(lr=0.5)  # no previous iterate: x1 as with FISTA
    assert torch.equal(net[1].weight.data, torch.tensor([0.5, 0.0, 0.0]))
    set_bn(net[1], gamma=[2.0, 0.25, -1.0], beta=[0.3, -1.5, 0.4])
    reg.proximal_step(lr=0.5)
    # x2 + 0.5 (x2 - x1): gamma 1.5 + 0.5 * 1 = 2.0, 0, -0.5 + 0.5 * (-0.5) = -0.75
    #                    beta 0, -1 + 0.5 * 0.5 = -0.75, 0
    assert torch.equal(net[1].weight.data, torch.tensor([2.0, 0.0, -0.75]))
    assert torch.equal(net[1].bias.data, torch.tensor([0.0, -0.75, 0.0]))
    reg.finalize()
    assert torch.equal(net[1].weight.data, torch.tensor([1.5, 0.0, -0.5]))


def test_shift_only_leaves_scale_alone_and_counts_zero_shifts() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0, scale=False)
    zero = reg.proximal_step(lr=0.5)
    assert torch.equal(net[1].weight.data, torch.tensor([1.0, -0.25, 0.5]))  # untouched
    assert torch.equal(net[1].bias.data, torch.tensor([0.0, -1.5, 0.0]))
    assert zero == 2  # shifts of channels 0 and 2


def test_scale_only_leaves_shift_alone_and_counts_zero_scales() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0, shift=False)
    zero = reg.proximal_step(lr=0.5)
    assert torch.equal(net[1].weight.data, torch.tensor([0.5, 0.0, 0.0]))
    assert torch.equal(net[1].bias.data, torch.tensor([0.3, -2.0, 0.0]))  # untouched
    assert zero == 2  # only gamma counts: channels 1 and 2


def test_penalty_and_add_penalty_known_answer() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=0.1)
    # |1| + |-0.25| + |0.5| + |0.3| + |-2| + |0| = 4.05
    assert reg.penalty().item() == pytest.approx(4.05)
    # 2 + 0.1 * 4.05 = 2.405
    assert reg.add_penalty(torch.tensor(2.0)).item() == pytest.approx(2.405)
    assert BNFISTARegularizer(net, lam=0.1, scale=False).penalty().item() == pytest.approx(2.3)
    assert BNFISTARegularizer(net, lam=0.1, shift=False).penalty().item() == pytest.approx(1.75)


def test_penalty_is_differentiable_with_sign_gradient() -> None:
    net = one_bn_net()
    BNFISTARegularizer(net, lam=0.1).penalty().backward()
    assert torch.equal(net[1].weight.grad, torch.tensor([1.0, -1.0, 1.0]))  # sign(gamma)
    assert torch.equal(net[1].bias.grad, torch.tensor([1.0, -1.0, 0.0]))  # sign(0) = 0


def test_regularize_adds_lam_sign_to_grads() -> None:
    net = one_bn_net()
    set_bn(net[1], gamma=[1.0, -0.25, 0.0], beta=[0.3, -2.0, 0.0])
    net[1].weight.grad = torch.tensor([0.5, 0.5, 0.5])
    reg = BNFISTARegularizer(net, lam=0.1)
    reg.regularize(net)
    # [0.5 + 0.1 * 1, 0.5 + 0.1 * (-1), 0.5 + 0.1 * 0]
    torch.testing.assert_close(net[1].weight.grad, torch.tensor([0.6, 0.4, 0.5]))
    # no gradient before: becomes 0.1 * sign(beta)
    torch.testing.assert_close(net[1].bias.grad, torch.tensor([0.1, -0.1, 0.0]))
    assert net[0].weight.grad is None  # conv weights are not regularized


def test_regularize_refuses_another_model() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=0.1)
    with pytest.raises(ValueError, match=r"regularize\(\) got a different model"):
        reg.regularize(one_bn_net())
    assert net[1].weight.grad is None and net[1].bias.grad is None


def test_ignored_layers_are_left_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
    )
    set_bn(net[1], [0.1, 0.2], [0.1, 0.2])
    set_bn(net[3], [0.1, 0.2], [0.1, 0.2])
    reg = BNFISTARegularizer(net, lam=1.0, ignored_layers=[net[3]])
    assert reg.proximal_step(lr=1.0) == 2  # threshold 1: both channels of net[1] go to 0
    assert torch.equal(net[1].weight.data, torch.zeros(2))
    assert torch.equal(net[3].weight.data, torch.tensor([0.1, 0.2]))


# ---------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return digits_split()


def test_fista_on_digits_reaches_exact_zeros_that_prune_without_changing_outputs(
    digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    net = digits_bn_net()
    reg = BNFISTARegularizer(net, lam=0.1)
    lr = 0.05
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    counts: list[int] = []
    for _ in range(6):
        net.train()
        for i in range(0, len(x_train), 50):
            optimizer.zero_grad()
            F.cross_entropy(net(x_train[i : i + 50]), y_train[i : i + 50]).backward()
            optimizer.step()
            counts.append(reg.proximal_step(lr))
    assert all(isinstance(c, int) for c in counts)
    zero = reg.num_zero_channels
    assert zero == counts[-1]
    assert zero >= 10  # measured: 21 of 80 channels with scale exactly 0
    reg.finalize()
    assert sum(int((bn.weight == 0).sum()) for bn in reg.norms) == zero  # exact 0.0 in the model
    assert reg.num_zero_channels == zero
    recalibrate_bn(net, x_train)
    assert accuracy(net, x_test, y_test) > 0.75  # measured 0.90; chance is 0.1

    params_before = param_count(net)
    with torch.no_grad():
        before = net(x_test)
    removed, messages = prune_quietly(reg, x_train[:2])
    # a zero-scale channel goes unless its constant (a positive shift) reaches a padded
    # conv: then it stays, and the warning counts it (measured: 20 removed, 1 kept)
    kept = [int(m.split(" ", 1)[0]) for m in messages]
    assert all("cannot be folded into a bias exactly" in m for m in messages)
    assert removed + sum(kept) == zero
    assert removed >= zero // 2
    assert sum(bn.num_features for bn in reg.norms) == 80 - removed
    assert param_count(net) < params_before
    with torch.no_grad():
        after = net(x_test)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- exact removal
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_removing_zero_scale_channels_keeps_outputs(arch: Arch) -> None:
    model = build(arch)
    zeroed = zero_some_scales(model)
    assert zeroed > 0
    x = arch.example()
    reg = BNFISTARegularizer(model, lam=0.0, ignored_layers=[classifier_of(model)])
    with torch.no_grad():
        before = model(x)
    params_before = param_count(model)
    removed, messages = prune_quietly(reg, x)
    assert 0 < removed <= zeroed
    assert all("cannot be folded into a bias exactly" in m for m in messages)
    assert param_count(model) < params_before
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_zero_scale_channel_before_a_grouped_conv_prunes_to_a_working_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1, groups=2, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 3),
    ).eval()
    set_bn(net[1], gamma=[1.0, 0.0, 1.0, 1.0], beta=[0.1, -1.0, 0.1, 0.1])  # channel 1 is 0
    x = torch.randn(2, 2, 3, 3)
    with torch.no_grad():
        before = net(x)
    reg = BNFISTARegularizer(net, lam=0.0, ignored_layers=[net[7]])
    assert reg.prune_zero_channels(x) == 0  # a channel a grouped conv reads stays
    assert net[3].in_channels % net[3].groups == 0
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def folding_net() -> nn.Sequential:
    """conv3x3 -> BN -> ReLU -> conv1x1 (no bias) -> BN -> ReLU -> flatten -> Linear."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    randomize_stats(net)
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([[2.0, 1.0, -1.0], [0.5, -3.0, 1.0]]).view(2, 3, 1, 1))
        fc = torch.randn(3, 32)
        fc[:, 16:] = torch.tensor([0.125, 0.25, 0.375])[:, None]  # the columns of channel 1
        net[7].weight.copy_(fc)
        net[7].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    # channel 0: constant relu(0.7) = 0.7 into the 1x1 conv; channel 2: constant relu(-0.3) = 0
    set_bn(net[1], gamma=[0.0, 0.8, 0.0], beta=[0.7, 0.1, -0.3])
    # channel 1: constant relu(0.5) = 0.5 into the Linear (16 columns after flatten)
    set_bn(net[4], gamma=[1.2, 0.0], beta=[0.2, 0.5])
    return net.eval()


def test_constant_channels_fold_into_the_next_bias() -> None:
    net = folding_net()
    assert net[3].bias is None
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        before = net(x)
    reg = BNFISTARegularizer(net, lam=0.1, ignored_layers=[net[7]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # everything folds: no warning
        removed = reg.prune_zero_channels(x)
    assert removed == 3  # channels 0 and 2 of the first BN, channel 1 of the second
    assert net[0].out_channels == 1 and net[3].in_channels == 1 and net[3].out_channels == 1
    assert net[7].in_features == 16
    # the 1x1 conv got a bias: 0.7 * W3[:, 0] = 0.7 * [2.0, 0.5] = [1.4, 0.35]; row 1 removed
    assert isinstance(net[3].bias, nn.Parameter)
    torch.testing.assert_close(net[3].bias.data, torch.tensor([1.4]))
    # Linear bias += 0.5 * (sum of the 16 columns of channel 1) = 0.5 * 16 * [0.125, 0.25, 0.375]
    #             = [1.0, 2.0, 3.0]; [0.1, -0.2, 0.3] + [1, 2, 3] = [1.1, 1.8, 3.3]
    torch.testing.assert_close(net[7].bias.data, torch.tensor([1.1, 1.8, 3.3]))
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_constant_channel_into_a_padded_conv_is_kept_with_a_warning() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, padding=1),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    )
    randomize_stats(net)
    # channel 0: constant relu(0.4) = 0.4 hits zero padding -> not a constant after the conv;
    # channel 2: constant relu(-0.3) = 0 -> removable
    set_bn(net[1], gamma=[0.0, 0.9, 0.0], beta=[0.4, 0.1, -0.3])
    net.eval()
    x = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        before = net(x)
    reg = BNFISTARegularizer(net, lam=0.1, ignored_layers=[net[5]])
    with pytest.warns(UserWarning, match=r"^1 channels with zero BatchNorm scale were kept"):
        removed = reg.prune_zero_channels(x)
    assert removed == 1
    assert net[1].num_features == 2
    assert net[1].weight.tolist() == pytest.approx([0.0, 0.9])  # the zero-scale one stayed
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_the_kept_channel_warning_points_at_the_caller() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3, 1, 1))
    set_bn(net[1], gamma=[0.0, 1.0], beta=[0.5, 0.0])
    reg = BNFISTARegularizer(net.eval(), lam=0.1)
    with pytest.warns(UserWarning, match=r"channels with zero BatchNorm scale") as record:
        reg.prune_zero_channels(torch.randn(1, 1, 4, 4))
    assert record[0].filename == __file__


def test_every_zero_scale_layer_keeps_one_channel() -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0)
    set_bn(net[1], gamma=[0.0, 0.0, 0.0], beta=[-1.0, -1.0, -1.0])
    assert reg.prune_zero_channels(torch.randn(1, 1, 4, 4)) == 2
    assert net[0].out_channels == 1 and net[3].in_channels == 1


# ---------------------------------------------------------------- bad input
def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -0.1}, r"lam must be a finite number >= 0, got -0.1"),
        ({"lam": float("nan")}, r"lam must be a finite number >= 0, got nan"),
        ({"lam": float("inf")}, r"lam must be a finite number >= 0, got inf"),
        ({"lam": 0.1, "scale": False, "shift": False}, r"scale and shift are both False"),
        ({"lam": 0.1, "momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"lam": 0.1, "momentum": -0.5}, r"momentum must be in \[0, 1\), got -0.5"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    net = bn_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=message):
        BNFISTARegularizer(net, **kwargs)
    assert_unchanged(net, before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": "0.1"}, r"lam must be a finite number >= 0, got '0.1'"),
        ({"lam": 0.1, "scale": 1}, r"scale must be True or False, got 1"),
        ({"lam": 0.1, "restart": "yes"}, r"restart must be True or False, got 'yes'"),
        ({"lam": 0.1, "momentum": "0.5"}, r"momentum must be in \[0, 1\), got '0.5'"),
    ],
)
def test_wrong_option_types(kwargs: dict[str, Any], message: str) -> None:
    """A value of the wrong type is a TypeError (the package's one validator rule)."""
    net = bn_net()
    before = model_state(net)
    with pytest.raises(TypeError, match=message):
        BNFISTARegularizer(net, **kwargs)
    assert_unchanged(net, before)


def test_model_without_batchnorm() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    before = model_state(net)
    with pytest.raises(ValueError, match=r"needs BatchNorm layers; the model has none"):
        BNFISTARegularizer(net, lam=0.1)
    assert_unchanged(net, before)


def test_every_batchnorm_ignored() -> None:
    net = bn_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=r"every BatchNorm of the model is ignored"):
        BNFISTARegularizer(net, lam=0.1, ignored_layers=[net[1]])
    with pytest.raises(ValueError, match=r"every BatchNorm of the model is ignored"):
        BNFISTARegularizer(net, lam=0.1, ignored_layers=[net])  # a module holding them
    assert_unchanged(net, before)


def test_ignored_layer_from_another_model() -> None:
    net = bn_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=r"ignored_layers must hold modules of the model"):
        BNFISTARegularizer(net, lam=0.1, ignored_layers=[nn.BatchNorm2d(2)])
    assert_unchanged(net, before)


@pytest.mark.parametrize(
    ("lr", "message"),
    [
        (0, r"lr must be a finite number > 0, got 0"),
        (-0.1, r"lr must be a finite number > 0, got -0.1"),
        (float("nan"), r"lr must be a finite number > 0, got nan"),
    ],
)
def test_bad_learning_rate(lr: float, message: str) -> None:
    net = one_bn_net()
    reg = BNFISTARegularizer(net, lam=1.0)
    reg.proximal_step(lr=0.5)
    before = model_state(net)
    with pytest.raises(ValueError, match=message):
        reg.proximal_step(lr=lr)
    assert_unchanged(net, before)
    assert reg.num_zero_channels == 2  # the sparse iterate is the one of the valid step
