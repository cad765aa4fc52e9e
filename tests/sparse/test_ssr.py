"""SSR (AULM): Z/U/W updates by hand, support recovery on least squares, removal, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import SSRImportance, SSRRegularizer
from tests.archs import ARCHS, Arch, build, classifier_of
from tests.helpers import assert_unchanged, model_state, param_count

pytestmark = pytest.mark.usefixtures("one_thread")

W_HAND = [[3.0, 4.0], [0.3, 0.4], [0.0, 1.0]]  # row norms 5, 0.5, 1


# ---------------------------------------------------------------- helpers
def hand_linear() -> nn.Linear:
    """Linear(2 -> 3) without bias: each output row is one group of two weights."""
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W_HAND))
    return layer


def z_and_u(reg: SSRRegularizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The auxiliary variable Z and scaled multiplier U of the (only) weight tensor."""
    assert len(reg._z) == 1 and len(reg._u) == 1
    return reg._z[0], reg._u[0]


def l21_hand(**kwargs: Any) -> tuple[nn.Linear, SSRRegularizer]:
    """threshold lam * w_g / rho = 1 * 1 / 2 = 0.5 (no group-size weight)."""
    layer = hand_linear()
    reg = SSRRegularizer(
        layer, torch.randn(1, 2), rho=2.0, lam=1.0, scale_by_group_size=False, **kwargs
    )
    return layer, reg


# ---------------------------------------------------------------- Z, U and W by hand
def test_update_auxiliary_l21_known_answer() -> None:
    layer, reg = l21_hand()
    assert reg.num_groups == 3
    assert reg.group_channels == [("", 0), ("", 1), ("", 2)]
    zero = reg.update_auxiliary()  # U = 0: Z = prox(W)
    z, u = z_and_u(reg)
    # factors max(0, 1 - 0.5 / ||row||): 1 - 0.5/5 = 0.9; 0.5 = t -> 0; 1 - 0.5/1 = 0.5
    # Z = [0.9 * [3, 4], 0 * [0.3, 0.4], 0.5 * [0, 1]]
    torch.testing.assert_close(z, torch.tensor([[2.7, 3.6], [0.0, 0.0], [0.0, 0.5]]))
    assert torch.equal(z[1], torch.zeros(2))
    # U = W + U_old - Z = W - Z
    torch.testing.assert_close(u, torch.tensor([[0.3, 0.4], [0.3, 0.4], [0.0, 0.5]]))
    assert zero == 1 and reg.num_zero_groups == 1
    assert torch.equal(layer.weight.data, torch.tensor(W_HAND))  # W itself does not move

    # second update with the same W: shifted = W + U = [[3.3, 4.4], [0.6, 0.8], [0, 1.5]],
    # norms 5.5, 1.0, 1.5 -> factors 1 - 0.5/5.5 = 10/11, 1 - 0.5/1 = 0.5, 1 - 0.5/1.5 = 2/3
    # Z = [[3.0, 4.0], [0.3, 0.4], [0.0, 1.0]]; U = shifted - Z = [[0.3, 0.4], [0.3, 0.4], [0, 0.5]]
    assert reg.update_auxiliary() == 0
    z, u = z_and_u(reg)
    torch.testing.assert_close(z, torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 1.0]]))
    torch.testing.assert_close(u, torch.tensor([[0.3, 0.4], [0.3, 0.4], [0.0, 0.5]]))


def test_update_auxiliary_l21_scaled_by_group_size() -> None:
    layer = hand_linear()
    reg = SSRRegularizer(layer, torch.randn(1, 2), rho=2.0, lam=1.0)
    reg.update_auxiliary()
    z, _ = z_and_u(reg)
    t = math.sqrt(2.0) / 2.0  # lam * sqrt(|g|) / rho = sqrt(2) / 2 = 0.7071068
    # row 0: (1 - 0.7071068 / 5) * [3, 4] = 0.8585786 * [3, 4] = [2.5757359, 3.4343146]
    # row 1: norm 0.5 < t -> 0; row 2: (1 - 0.7071068) * [0, 1] = [0, 0.2928932]
    assert t == pytest.approx(0.7071068)
    torch.testing.assert_close(
        z, torch.tensor([[2.5757359, 3.4343146], [0.0, 0.0], [0.0, 0.2928932]])
    )


def test_update_auxiliary_l20_keeps_only_the_largest_row() -> None:
    layer = hand_linear()
    reg = SSRRegularizer(layer, torch.randn(1, 2), rho=2.0, kind="l20", keep=1)
    assert reg.keep == 1
    assert reg.update_auxiliary() == 2
    z, u = z_and_u(reg)
    # keep the row of largest norm (5): Z = [[3, 4], 0, 0]; U = W - Z
    assert torch.equal(z, torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(u, torch.tensor([[0.0, 0.0], [0.3, 0.4], [0.0, 1.0]]))


def test_keep_as_a_fraction() -> None:
    layer = hand_linear()
    reg = SSRRegularizer(layer, torch.randn(1, 2), rho=2.0, kind="l20", keep=0.5)
    assert reg.keep == 2  # max(1, round(0.5 * 3)) = round(1.5) = 2 (banker's rounding)
    assert reg.num_zero_groups == 1  # row 1, the smallest (norm 0.5), is dropped


def test_proximal_step_known_answer() -> None:
    layer, reg = l21_hand(update_every=100)  # no Z/U update during this test
    reg.update_auxiliary()  # Z, U as in test_update_auxiliary_l21_known_answer
    zero = reg.proximal_step(lr=0.25)  # lr * rho = 0.5
    # Z - U = [[2.4, 3.2], [-0.3, -0.4], [0, 0]]
    # W + 0.5 (Z - U) = [[4.2, 5.6], [0.15, 0.2], [0, 1]];  / (1 + 0.5):
    expected = torch.tensor([[2.8, 3.7333333], [0.1, 0.1333333], [0.0, 0.6666667]])
    torch.testing.assert_close(layer.weight.data, expected)
    assert zero == 1  # Z did not change: row 1 still at zero


def test_penalty_and_regularize_known_answer_and_update_schedule() -> None:
    layer, reg = l21_hand(update_every=2)
    # Z = prox(W) = [[2.7, 3.6], 0, [0, 0.5]], U = 0 since construction
    # W - Z + U = [[0.3, 0.4], [0.3, 0.4], [0, 0.5]]; 0.5 * (0.25 + 0.25 + 0.25) = 0.375
    assert reg.penalty().item() == pytest.approx(0.375)
    assert reg.add_penalty(torch.tensor(1.0)).item() == pytest.approx(1.0 + 2.0 * 0.375)
    reg.regularize(layer)  # call 1 of 2: gradient only, no Z/U update
    # rho (W - Z + U) = 2 * [[0.3, 0.4], [0.3, 0.4], [0, 0.5]]
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.6, 0.8], [0.6, 0.8], [0, 1.0]]))
    assert reg.penalty().item() == pytest.approx(0.375)
    layer.weight.grad = None
    reg.regularize()  # call 2 of 2: the same gradient, then Z = prox(W + 0) and U = W - Z
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[0.6, 0.8], [0.6, 0.8], [0, 1.0]]))
    # W - Z + U = 2 (W - Z): 0.5 * 4 * 0.75 = 1.5
    assert reg.penalty().item() == pytest.approx(1.5)


def test_regularize_refuses_another_model() -> None:
    layer, reg = l21_hand()
    with pytest.raises(ValueError, match=r"regularize\(\) got a different model"):
        reg.regularize(hand_linear())
    assert layer.weight.grad is None


def test_finalize_zeroes_the_groups_whose_z_is_zero() -> None:
    layer, reg = l21_hand()
    reg.finalize()  # Z = prox(W): row 1 is zero in Z
    assert torch.equal(layer.weight.data, torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 1.0]]))
    assert reg.group_norms().tolist() == pytest.approx([5.0, 0.0, 1.0])


def test_l21_keeps_one_channel_per_layer_in_z() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    reg = SSRRegularizer(net, torch.randn(1, 1, 8, 8), rho=1.0, lam=100.0, ignored_layers=[net[2]])
    assert reg.num_groups == 4
    assert reg.num_zero_groups == 3  # the largest filter of the layer stays
    reg.finalize()
    assert float(net[0].weight.detach().abs().sum()) > 0


# ---------------------------------------------------------------- least squares
@pytest.fixture(scope="module")
def least_squares() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g)
    w_star = torch.randn(6, 10, generator=g)
    w_star[1] = 0.0
    w_star[3] = 0.0
    return x, x @ w_star.T, w_star


def fit(
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], convention: str, **kwargs: Any
) -> tuple[nn.Linear, SSRRegularizer]:
    x, y, _ = data
    torch.manual_seed(0)
    model = nn.Linear(10, 6, bias=False)
    reg = SSRRegularizer(model, x[:1], rho=1.0, update_every=5, scale_by_group_size=False, **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(1000):
        optimizer.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum(1).mean()).backward()
        if convention == "regularize":
            reg.regularize()
        optimizer.step()
        if convention == "proximal":
            reg.proximal_step(0.1)
    return model, reg


@pytest.mark.parametrize("convention", ["proximal", "regularize"])
@pytest.mark.parametrize(
    ("kwargs", "tolerance"),
    [
        ({"kind": "l21", "lam": 0.05}, 0.1),  # measured 0.033: group lasso shrinks a little
        ({"kind": "l20", "keep": 4}, 1e-3),  # measured 2e-6: no shrinkage on kept groups
    ],
    ids=["l21", "l20"],
)
def test_aulm_recovers_the_group_support(
    least_squares: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    convention: str,
    kwargs: dict[str, Any],
    tolerance: float,
) -> None:
    model, reg = fit(least_squares, convention, **kwargs)
    w_star = least_squares[2]
    assert reg.num_zero_groups == 2
    reg.finalize()
    norms = reg.group_norms()
    assert (norms == 0).nonzero().flatten().tolist() == [1, 3]
    assert bool((norms[[0, 2, 4, 5]] > 1.0).all())  # true norms are ~1.7 to 3.8
    assert torch.equal(model.weight.data[[1, 3]], torch.zeros(2, 10))
    assert float((model.weight.data - w_star).abs().max()) < tolerance


# ---------------------------------------------------------------- removal on architectures
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_finalize_then_prune_keeps_outputs(arch: Arch) -> None:
    model = build(arch)
    x = arch.example()
    reg = SSRRegularizer(
        model, x, rho=1e-2, kind="l20", keep=0.5, ignored_layers=[classifier_of(model)]
    )
    groups = reg.num_groups
    zero = reg.num_zero_groups
    assert reg.keep == round(0.5 * groups)
    # keep the largest, plus at most one per dependency group that would be emptied
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert groups - reg.keep - layers <= zero <= groups - reg.keep
    assert zero > 0.4 * groups
    reg.finalize()
    with torch.no_grad():
        before = model(x)
    params_before = param_count(model)
    removed = reg.prune_zero_groups()
    # channels a grouped (not depthwise) conv reads or writes are never removed
    assert removed == zero if arch.name != "grouped" else 0 < removed < zero
    assert reg.num_groups == groups - removed
    assert int((reg.group_norms() == 0).sum()) == zero - removed
    assert param_count(model) < params_before
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_zero_group_feeding_a_grouped_conv_prunes_to_a_working_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1, groups=2, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 3),
    )
    x = torch.randn(2, 2, 3, 3)
    reg = SSRRegularizer(net, x, rho=1.0, kind="l20", keep=7, ignored_layers=[net[5]])
    with torch.no_grad():
        net[0].weight[1] = 0.0  # filter 1 outputs exact zeros
        before = net(x)
    assert reg.prune_zero_groups() == 0  # channels of a grouped conv stay
    assert net[2].in_channels % net[2].groups == 0
    with torch.no_grad():
        after = net(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- SSRImportance
def importance_net() -> nn.Sequential:
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, 2.0]]).view(3, 2, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
        net[1].weight.copy_(torch.tensor([1.0, 0.0, 2.0]))
        net[1].bias.copy_(torch.tensor([0.5, 0.0, 0.0]))
        # the consumer's column of the zeroed filter is large: it must not count
        net[3].weight.copy_(torch.tensor([[1.0, 100.0, 1.0], [1.0, 100.0, 1.0]]).view(2, 3, 1, 1))
    return net


def test_ssr_importance_is_the_energy_of_the_filter_part() -> None:
    net = importance_net()
    graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 2, 4, 4))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[0, 1, 2])
    scores = SSRImportance()(group)
    # filter row^2 + bias^2 + gamma^2 + beta^2:
    # [1 + 4 + 1 + 1 + 0.25, 0, 4 + 4 + 1 + 4 + 0] = [7.25, 0, 13]
    assert scores.tolist() == pytest.approx([7.25, 0.0, 13.0])


def test_ssr_importance_in_metapruner_removes_the_zeroed_filter() -> None:
    net = importance_net()
    pruner = tp.pruner.MetaPruner(
        net,
        torch.randn(1, 2, 4, 4),
        importance=SSRImportance(),
        pruning_ratio=1 / 3,
        global_pruning=True,
        ignored_layers=[net[3]],
    )
    pruner.step()
    assert net[0].out_channels == 2
    # rows 0 and 2 survive
    assert torch.equal(net[0].weight.data.view(2, 2), torch.tensor([[1.0, 2.0], [2.0, 2.0]]))
    assert torch.equal(net[1].weight.data, torch.tensor([1.0, 2.0]))
    assert torch.equal(net[3].weight.data.view(2, 2), torch.ones(2, 2))


# ---------------------------------------------------------------- bad input
def bad_input_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3)
    ).train()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 0.0}, r"rho must be a finite number > 0, got 0.0"),
        ({"rho": -1.0}, r"rho must be a finite number > 0, got -1.0"),
        ({"rho": float("nan")}, r"rho must be a finite number > 0, got nan"),
        ({"rho": 1.0, "kind": "l1"}, r"kind must be one of 'l21', 'l20', got 'l1'"),
        ({"rho": 1.0, "kind": "l20", "keep": 0}, r"keep must be between 1 and .* \(4\), got 0"),
        ({"rho": 1.0, "kind": "l20", "keep": 5}, r"keep must be between 1 and .* \(4\), got 5"),
        ({"rho": 1.0, "kind": "l20", "keep": 1.5}, r"keep as a fraction must be in \(0, 1\]"),
        ({"rho": 1.0, "kind": "l20", "keep": 0.0}, r"keep as a fraction must be in \(0, 1\]"),
        ({"rho": 1.0, "kind": "l20"}, r"kind='l20' needs keep"),
        ({"rho": 1.0, "kind": "l21", "keep": 2}, r"keep is for kind='l20'"),
        ({"rho": 1.0, "kind": "l20", "keep": 2, "lam": 0.1}, r"lam is for kind='l21'"),
        ({"rho": 1.0, "lam": -0.1}, r"lam must be a finite number >= 0, got -0.1"),
        ({"rho": 1.0, "update_every": 0}, r"update_every must be an integer >= 1, got 0"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    net = bad_input_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=message):
        SSRRegularizer(net, torch.randn(2, 1, 8, 8), ignored_layers=[net[3]], **kwargs)
    assert_unchanged(net, before)
    assert net.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rho": 1.0, "kind": "l20", "keep": True}, r"keep must be an integer or a fraction"),
        ({"rho": 1.0, "kind": "l20", "keep": "2"}, r"keep must be an integer or a fraction"),
        ({"rho": 1.0, "update_every": 2.0}, r"update_every must be an integer >= 1, got 2.0"),
        ({"rho": 1.0, "scale_by_group_size": 1}, r"scale_by_group_size must be True or False"),
        ({"rho": "1"}, r"rho must be a finite number > 0, got '1'"),
    ],
)
def test_wrong_option_types(kwargs: dict[str, Any], message: str) -> None:
    """A value of the wrong type is a TypeError (the package's one validator rule)."""
    net = bad_input_net()
    before = model_state(net)
    with pytest.raises(TypeError, match=message):
        SSRRegularizer(net, torch.randn(2, 1, 8, 8), ignored_layers=[net[3]], **kwargs)
    assert_unchanged(net, before)


def test_ignored_layer_from_another_model() -> None:
    net = bad_input_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=r"ignored_layers must hold modules of the model"):
        SSRRegularizer(net, torch.randn(2, 1, 8, 8), rho=1.0, ignored_layers=[nn.Conv2d(1, 1, 1)])
    assert_unchanged(net, before)


def test_everything_ignored() -> None:
    net = bad_input_net()
    before = model_state(net)
    with pytest.raises(ValueError, match=r"nothing to regularize"):
        SSRRegularizer(net, torch.randn(2, 1, 8, 8), rho=1.0, ignored_layers=[net[0], net[3]])
    assert_unchanged(net, before)


@pytest.mark.parametrize("lr", [0, -0.1, float("inf")])
def test_bad_learning_rate(lr: float) -> None:
    layer, reg = l21_hand()
    before = model_state(layer)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        reg.proximal_step(lr)
    assert_unchanged(layer, before)
    assert reg.penalty().item() == pytest.approx(0.375)  # Z and U untouched too
