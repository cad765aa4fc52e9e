"""OICSR: known answers on a hand-set net, gradients, proximal step, importance, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCPruner, OICSRImportance, OICSRRegularizer
from tests.archs import ARCHS, build, classifier_of
from tests.helpers import assert_unchanged, model_state


class ThreeLayer(nn.Module):
    """conv1 (2->3, bias) -> BN -> ReLU -> conv2 (3->2, no bias) -> ReLU -> flatten -> fc (2->2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 1, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.fc(x.flatten(1))


def three_layer() -> ThreeLayer:
    net = ThreeLayer()
    with torch.no_grad():
        net.conv1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [3.0, 0.0]]).view(3, 2, 1, 1))
        net.conv1.bias.copy_(torch.tensor([1.0, -0.5, 2.0]))
        net.bn.weight.copy_(torch.tensor([1.0, 0.25, -1.0]))
        net.bn.bias.copy_(torch.tensor([0.0, 0.5, 1.0]))
        net.conv2.weight.copy_(torch.tensor([[2.0, 1.0, -1.0], [0.0, -3.0, 1.0]]).view(2, 3, 1, 1))
        net.fc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
        net.fc.bias.copy_(torch.tensor([0.3, -0.3]))
    return net


X1 = torch.randn(1, 2, 1, 1)


def hand_groups(net: ThreeLayer) -> list[torch.Tensor]:
    """The weights of every out-in group, written out by hand."""
    w1, b1 = net.conv1.weight.detach().view(3, 2), net.conv1.bias.detach()
    g, b = net.bn.weight.detach(), net.bn.bias.detach()
    w2, fc = net.conv2.weight.detach().view(2, 3), net.fc.weight.detach()
    # channel i of conv1: its filter row, bias, BN scale and shift, and conv2's column i
    first = [
        torch.cat([w1[i], b1[i : i + 1], g[i : i + 1], b[i : i + 1], w2[:, i]]) for i in range(3)
    ]
    # channel j of conv2: its filter row and fc's column j (fc is ignored: no group of its own)
    second = [torch.cat([w2[j], fc[:, j]]) for j in range(2)]
    return first + second


@pytest.mark.parametrize("scaled", [True, False])
def test_penalty_is_the_hand_computed_group_lasso(scaled: bool) -> None:
    net = three_layer()
    reg = OICSRRegularizer(net, X1, ignored_layers=[net.fc], scale_by_group_size=scaled)
    groups = hand_groups(net)
    assert reg.num_groups == 5
    assert sorted(reg.group_channels) == [
        ("conv1", 0),
        ("conv1", 1),
        ("conv1", 2),
        ("conv2", 0),
        ("conv2", 1),
    ]
    assert in_model_order(reg, reg.group_sizes) == [7, 7, 7, 5, 5]
    expected = sum((math.sqrt(len(w)) if scaled else 1.0) * float(w.norm()) for w in groups)
    # by hand: group 0 = [1, -2, 1, 1, 0, 2, 0], norm sqrt(11)
    assert groups[0].tolist() == [1.0, -2.0, 1.0, 1.0, 0.0, 2.0, 0.0]
    assert reg.penalty().item() == pytest.approx(expected, rel=1e-6)
    assert in_model_order(reg, reg.group_norms())[0] == pytest.approx(math.sqrt(11), rel=1e-6)


def in_model_order(reg: OICSRRegularizer, values: torch.Tensor) -> list[float]:
    """``values`` (one per group) ordered conv1 channels 0-2, then conv2 channels 0-1."""
    order = {("conv1", i): i for i in range(3)} | {("conv2", j): 3 + j for j in range(2)}
    ranked = sorted(
        zip(reg.group_channels, values.tolist(), strict=True), key=lambda t: order[t[0]]
    )
    return [v for _, v in ranked]


def _grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scaled", [True, False])
def test_regularize_adds_exactly_the_analytic_gradient(scaled: bool) -> None:
    net = three_layer()
    lam = 0.01
    reg = OICSRRegularizer(net, X1, lam=lam, ignored_layers=[net.fc], scale_by_group_size=scaled)
    reg.penalty().backward()
    autograd = _grads(net)
    # some gradient already there: regularize must add to it
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    reg.regularize(net)
    for name, p in net.named_parameters():
        expected = 0.5 + lam * autograd.get(name, torch.zeros_like(p))
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-7)
    # by hand, for conv1.weight[0, 0] = 1 in group 0 (norm sqrt(11), |g| = 7)
    weight = math.sqrt(7) if scaled else 1.0
    assert net.conv1.weight.grad[0, 0, 0, 0].item() == pytest.approx(
        0.5 + lam * weight * 1.0 / math.sqrt(11), rel=1e-6
    )
    assert "fc.bias" not in autograd  # no group owns the ignored layer's outputs


def test_zeroed_group_gives_finite_zero_gradients() -> None:
    net = three_layer()
    with torch.no_grad():
        net.conv1.weight[0].zero_()
        net.conv1.bias[0] = 0
        net.bn.weight[0] = 0
        net.bn.bias[0] = 0
        net.conv2.weight[:, 0].zero_()
    reg = OICSRRegularizer(net, X1, ignored_layers=[net.fc])
    assert in_model_order(reg, reg.group_norms())[0] == 0.0
    reg.penalty().backward()
    for p in net.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    assert net.conv1.weight.grad[0].abs().sum().item() == 0.0
    assert net.conv2.weight.grad[:, 0].abs().sum().item() == 0.0
    net.zero_grad()
    reg.regularize()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_proximal_step_zeroes_small_groups_and_scales_the_others() -> None:
    net = three_layer()
    lam, lr = 1.0, 0.5
    reg = OICSRRegularizer(net, X1, lam=lam, ignored_layers=[net.fc], scale_by_group_size=False)
    groups = hand_groups(net)
    norms = [float(w.norm()) for w in groups]
    # threshold lr * lam = 0.5 per group; shrink every group below 0.5 in norm but one
    with torch.no_grad():
        net.conv1.weight[1].mul_(0.1)
        net.conv1.bias[1] *= 0.1
        net.bn.weight[1] *= 0.1
        net.bn.bias[1] *= 0.1
        net.conv2.weight[:, 1].mul_(0.1)
    groups = hand_groups(net)
    norms = [float(w.norm()) for w in groups]
    assert norms[1] < 0.5 < min(norms[:1] + norms[2:])
    s = [max(0.0, 1 - 0.5 / n) for n in norms]  # the group soft-threshold factors
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    zeroed = reg.proximal_step(lr)
    assert zeroed == 1
    w1 = before["conv1.weight"].view(3, 2)
    assert torch.equal(net.conv1.weight.view(3, 2)[1], torch.zeros(2))
    assert net.bn.weight[1].item() == 0.0 and net.bn.bias[1].item() == 0.0
    for i in (0, 2):  # conv1 rows: only their own group's factor
        torch.testing.assert_close(net.conv1.weight.view(3, 2)[i], w1[i] * s[i])
        assert net.bn.bias[i].item() == pytest.approx(before["bn.bias"][i].item() * s[i])
    w2 = before["conv2.weight"].view(2, 3)
    for j in range(2):  # conv2 cell (j, i): in-group i and out-group 3 + j
        for i in range(3):
            expected = w2[j, i].item() * s[i] * s[3 + j]
            assert net.conv2.weight.view(2, 3)[j, i].item() == pytest.approx(expected, abs=1e-7)
    fc = before["fc.weight"]
    torch.testing.assert_close(net.fc.weight, fc * torch.tensor([s[3], s[4]]))
    torch.testing.assert_close(net.fc.bias, before["fc.bias"])  # in no group


def test_importance_is_the_out_in_group_energy() -> None:
    net = three_layer()
    graph = tp.DependencyGraph().build_dependency(net, X1)
    group = graph.get_pruning_group(net.conv1, tp.prune_conv_out_channels, [0, 1, 2])
    scores = OICSRImportance()(group)
    expected = [float(w.square().sum()) for w in hand_groups(net)[:3]]
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[0] == pytest.approx(11.0)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_regularize_matches_autograd_and_energy_matches_norms(arch) -> None:
    net = build(arch)
    x = torch.randn(1, 3, arch.input_size, arch.input_size)
    reg = OICSRRegularizer(net, x, lam=1.0, ignored_layers=[classifier_of(net)])
    reg.penalty().backward()
    autograd = _grads(net)
    net.zero_grad(set_to_none=True)
    reg.regularize(net)
    assert set(_grads(net)) == set(autograd)
    for name, grad in _grads(net).items():
        torch.testing.assert_close(grad, autograd[name], rtol=1e-5, atol=1e-7)
    # coupled channels form one group: as many groups as the graph has root channels
    graph = tp.DependencyGraph().build_dependency(net, x)
    groups = list(graph.get_all_groups(ignored_layers=[classifier_of(net)]))
    assert reg.num_groups == sum(len(g[0].idxs) for g in groups)
    energies = torch.cat([OICSRImportance()(g) for g in groups])
    torch.testing.assert_close(energies, reg.group_norms().square(), rtol=1e-4, atol=1e-6)


def test_update_follows_pruning() -> None:
    net = build(ARCHS[1])
    x = torch.randn(1, 3, 32, 32)
    reg = OICSRRegularizer(net, x, ignored_layers=[classifier_of(net)])
    before = reg.num_groups
    pruner = CPMCPruner(net, x, flops_reduction=0.3, ignored_layers=[classifier_of(net)])
    pruner.step()
    assert reg.num_groups < before  # rebuilt by itself: weights were replaced
    reg.penalty().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    reg.update()  # explicit rebuild works too
    assert reg.num_groups < before


def test_tracing_leaves_batchnorm_statistics_and_mode_alone() -> None:
    net = build(ARCHS[0]).train()
    stats = model_state(net)
    OICSRRegularizer(net, torch.randn(4, 3, 32, 32), ignored_layers=[classifier_of(net)])
    assert net.training
    assert_unchanged(net, stats)


def test_oicsr_importance_drives_the_budgeted_pruner_with_a_finetune_hook() -> None:
    net = build(ARCHS[1])
    x = torch.randn(1, 3, 32, 32)
    calls: list[tuple[int, int]] = []

    def finetune(model: nn.Module, step: int) -> None:
        calls.append((step, sum(p.numel() for p in model.parameters())))

    pruner = CPMCPruner(
        net,
        x,
        importance=OICSRImportance(),
        flops_reduction=0.4,
        iterative_steps=4,
        ignored_layers=[classifier_of(net)],
        finetune_fn=finetune,
    )
    report = pruner.prune()
    assert [step for step, _ in calls] == [1, 2, 3, 4]
    sizes = [n for _, n in calls]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4  # every step pruned
    assert abs(report.macs_reduction - 0.4) < 0.005
    with pytest.warns(UserWarning, match="steps are done"):
        pruner.step()
    assert len(calls) == 4  # no fine-tune for a step that pruned nothing


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lam": -1e-4}, ValueError, r"lam must be a finite number >= 0, got -0.0001"),
        ({"lam": float("nan")}, ValueError, r"lam must be a finite number >= 0, got nan"),
        ({"lam": "big"}, TypeError, r"lam must be a finite number >= 0, got 'big'"),
    ],
)
def test_bad_lam_is_refused(options: dict, error: type[Exception], match: str) -> None:
    net = three_layer()
    state = model_state(net)
    with pytest.raises(error, match=match):
        OICSRRegularizer(net, X1, ignored_layers=[net.fc], **options)
    assert_unchanged(net, state)


@pytest.mark.parametrize("lr", [0, -0.1, float("inf")])
def test_bad_learning_rate_is_refused(lr: float) -> None:
    net = three_layer()
    reg = OICSRRegularizer(net, X1, lam=1.0, ignored_layers=[net.fc])
    state = model_state(net)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        reg.proximal_step(lr)
    assert_unchanged(net, state)


def test_nothing_to_regularize_is_refused() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"nothing to regularize"):
        OICSRRegularizer(net, torch.randn(1, 4), ignored_layers=[net[1]])


def test_ignored_layer_outside_the_model_is_refused() -> None:
    net = three_layer()
    with pytest.raises(ValueError, match=r"ignored_layers must hold modules of the model"):
        OICSRRegularizer(net, X1, ignored_layers=[nn.Linear(2, 2)])


def test_inputs_that_do_not_run_are_refused() -> None:
    net = three_layer()
    state = model_state(net)
    with pytest.raises(ValueError, match=r"example_inputs cannot run through the model"):
        OICSRRegularizer(net, torch.randn(1, 5, 1, 1), ignored_layers=[net.fc])
    assert_unchanged(net, state)


def test_regularize_refuses_another_model() -> None:
    net = three_layer()
    reg = OICSRRegularizer(net, X1, ignored_layers=[net.fc])
    with pytest.raises(ValueError, match=r"different model"):
        reg.regularize(three_layer())


def test_finetune_fn_must_be_callable() -> None:
    net = three_layer()
    with pytest.raises(TypeError, match=r"finetune_fn must be callable"):
        CPMCPruner(net, X1, ignored_layers=[net.fc], finetune_fn="train")  # type: ignore[arg-type]
