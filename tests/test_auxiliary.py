"""Auxiliary classifiers: shapes, training on digits, a clean detach, the loss, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import AuxiliaryClassifiers, attach_auxiliary_classifiers, combined_loss

from .helpers import assert_state_unchanged, digits_split, snapshot

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- helpers
def small_net() -> nn.Sequential:
    """Three conv-BN-ReLU blocks on 1x8x8 inputs; modules "1" (8 ch) and "5" (16 ch) are BNs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(),  # 2
        nn.MaxPool2d(2),  # 3
        nn.Conv2d(8, 16, 3, padding=1, bias=False),  # 4
        nn.BatchNorm2d(16),  # 5
        nn.ReLU(),  # 6
        nn.Conv2d(16, 16, 3, padding=1, bias=False),  # 7
        nn.BatchNorm2d(16),  # 8
        nn.ReLU(),  # 9
        nn.AdaptiveAvgPool2d(1),  # 10
        nn.Flatten(),  # 11
        nn.Linear(16, 10),  # 12
    )


def hooks_left(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs
    ]


def structure(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in model.named_modules()]


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = digits_split()
    return x[:400], y[:400]


# ---------------------------------------------------------------- forward
def test_forward_returns_logits_and_one_aux_output_per_name() -> None:
    net = small_net().eval()
    wrapped = attach_auxiliary_classifiers(net, at=["1", "5"], num_classes=10)
    assert isinstance(wrapped, AuxiliaryClassifiers)
    assert wrapped.at == ("1", "5")
    assert [h.fc.in_features for h in wrapped.heads] == [8, 16]  # BN num_features
    x = torch.randn(4, 1, 8, 8)
    logits, aux = wrapped(x)
    assert logits.shape == (4, 10)
    assert isinstance(aux, list) and [a.shape for a in aux] == [(4, 10), (4, 10)]
    with torch.no_grad():
        torch.testing.assert_close(logits, net(x))
        # head = global average pool of the layer's output, then its Linear
        torch.testing.assert_close(aux[0], wrapped.heads[0].fc(net[:2](x).mean((2, 3))))
        torch.testing.assert_close(aux[1], wrapped.heads[1].fc(net[:6](x).mean((2, 3))))


def test_aux_outputs_follow_the_order_of_at() -> None:
    net = small_net().eval()
    wrapped = attach_auxiliary_classifiers(net, at=["5", "1"], num_classes=3)
    assert [h.fc.in_features for h in wrapped.heads] == [16, 8]
    x = torch.randn(2, 1, 8, 8)
    _, aux = wrapped(x)
    with torch.no_grad():
        torch.testing.assert_close(aux[0], wrapped.heads[0].fc(net[:6](x).mean((2, 3))))
    assert [a.shape for a in aux] == [(2, 3), (2, 3)]


def test_layer_without_a_channel_attribute_works_with_example_inputs() -> None:
    net = small_net().train()
    before = snapshot(net)
    wrapped = attach_auxiliary_classifiers(
        net, at=["2", "6"], num_classes=10, example_inputs=torch.randn(2, 1, 8, 8)
    )
    assert [h.fc.in_features for h in wrapped.heads] == [8, 16]  # from the traced shapes
    assert_state_unchanged(net, before)  # the probe ran in eval mode: BN stats untouched
    assert net.training
    _, aux = wrapped(torch.randn(3, 1, 8, 8))
    assert [a.shape for a in aux] == [(3, 10), (3, 10)]


def test_heads_are_trainable_parameters_of_the_wrapper() -> None:
    net = small_net()
    wrapped = attach_auxiliary_classifiers(net, at=["1", "5"], num_classes=10)
    model_ids = {id(p) for p in net.parameters()}
    head_ids = {id(p) for p in wrapped.heads.parameters()}
    assert {id(p) for p in wrapped.parameters()} == model_ids | head_ids
    assert not model_ids & head_ids
    assert len(head_ids) == 4  # weight + bias of each head


# ---------------------------------------------------------------- training and detach
def test_training_with_combined_loss_then_detach_gives_the_plain_model_back(
    digits: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = digits
    net = small_net()
    names_before = structure(net)
    keys_before = list(net.state_dict().keys())
    assert hooks_left(net) == []
    wrapped = attach_auxiliary_classifiers(net, at=["1", "5"], num_classes=10)
    heads_before = [h.fc.weight.detach().clone() for h in wrapped.heads]
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=0.01)

    def loss_on_all() -> float:
        wrapped.eval()
        with torch.no_grad():
            return float(combined_loss(wrapped(x), y))

    start = loss_on_all()
    wrapped.train()
    for _ in range(5):
        for i in range(0, len(x), 50):
            optimizer.zero_grad()
            loss = combined_loss(wrapped(x[i : i + 50]), y[i : i + 50], aux_weight=0.3)
            loss.backward()
            optimizer.step()
    end = loss_on_all()
    # untrained: about (1 + 2 * 0.3) * log(10) = 3.68 (measured 3.70)
    assert start == pytest.approx(1.6 * math.log(10), rel=0.1)
    assert end < 0.75 * start  # measured 1.93
    for before, head in zip(heads_before, wrapped.heads, strict=True):
        assert not torch.equal(before, head.fc.weight)

    x_eval = x[:20]
    wrapped.eval()
    with torch.no_grad():
        logits, _ = wrapped(x_eval)
    plain = wrapped.detach()
    assert plain is net
    assert structure(plain) == names_before
    assert list(plain.state_dict().keys()) == keys_before
    assert hooks_left(plain) == []
    with torch.no_grad():
        assert torch.equal(plain(x_eval), logits)
    with pytest.raises(RuntimeError, match=r"the auxiliary classifiers were detached"):
        wrapped(x_eval)


def test_detach_twice_is_harmless() -> None:
    net = small_net()
    wrapped = attach_auxiliary_classifiers(net, at=["1"], num_classes=10)
    assert wrapped.detach() is net
    assert wrapped.detach() is net
    assert hooks_left(net) == []


def test_two_wrappers_detach_independently() -> None:
    net = small_net().eval()
    first = attach_auxiliary_classifiers(net, at=["1"], num_classes=10)
    second = attach_auxiliary_classifiers(net, at=["1", "5"], num_classes=10)
    first.detach()
    assert hooks_left(net) == ["1", "5"]  # the second wrapper's hooks stay
    _, aux = second(torch.randn(2, 1, 8, 8))
    assert len(aux) == 2
    second.detach()
    assert hooks_left(net) == []


# ---------------------------------------------------------------- combined_loss
def test_combined_loss_known_answer() -> None:
    logits = torch.tensor([[2.0, 0.0]])
    target = torch.tensor([0])
    aux = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])]
    # CE([2, 0], 0) = log(1 + e^-2) = 0.1269280; CE([0, 0], 0) = log 2 = 0.6931472;
    # CE([0, 2], 0) = log(1 + e^2) = 2.1269280
    assert float(combined_loss(logits, target)) == pytest.approx(0.1269280, abs=1e-6)
    # 0.1269280 + 0.5 * 0.6931472 = 0.4735016
    assert float(combined_loss((logits, aux[:1]), target, aux_weight=0.5)) == pytest.approx(
        0.4735016, abs=1e-6
    )
    # default weight 0.3: 0.1269280 + 0.3 * (0.6931472 + 2.1269280) = 0.9729506
    assert float(combined_loss((logits, aux), target)) == pytest.approx(0.9729506, abs=1e-6)
    # weight 0: only the main loss
    assert float(combined_loss((logits, aux), target, aux_weight=0)) == pytest.approx(
        0.1269280, abs=1e-6
    )
    # no aux outputs at all
    assert float(combined_loss((logits, []), target)) == pytest.approx(0.1269280, abs=1e-6)


def test_combined_loss_with_a_custom_criterion() -> None:
    def total(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return out.sum()

    logits = torch.tensor([[1.0, 2.0]])  # sum 3
    aux = [torch.tensor([[4.0, 6.0]])]  # sum 10
    # 3 + 0.25 * 10 = 5.5
    loss = combined_loss((logits, aux), torch.tensor([0]), aux_weight=0.25, criterion=total)
    assert float(loss) == 5.5


def test_combined_loss_gradients_reach_the_aux_outputs_scaled() -> None:
    logits = torch.zeros(1, 2, requires_grad=True)
    aux = torch.zeros(1, 2, requires_grad=True)
    combined_loss((logits, [aux]), torch.tensor([1]), aux_weight=0.5).backward()
    # d CE / d logits at zeros = softmax - onehot = [0.5, -0.5]; the aux one times 0.5
    torch.testing.assert_close(logits.grad, torch.tensor([[0.5, -0.5]]))
    torch.testing.assert_close(aux.grad, torch.tensor([[0.25, -0.25]]))


@pytest.mark.parametrize("weight", [-0.1, float("nan"), "0.3"])
def test_combined_loss_bad_weight(weight: Any) -> None:
    with pytest.raises(ValueError, match=r"aux_weight must be a finite number >= 0"):
        combined_loss(torch.zeros(1, 2), torch.tensor([0]), aux_weight=weight)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("at", "num_classes", "message"),
    [
        (["nope"], 10, r"at names modules the model does not have: \['nope'\]"),
        (["1", "99"], 10, r"at names modules the model does not have: \['99'\]"),
        ([""], 10, r"at names modules the model does not have: \[''\]"),
        ([], 10, r"at must be a non-empty list of module names, got \[\]"),
        ("1", 10, r"at must be a non-empty list of module names, got '1'"),
        (["1", "5", "1"], 10, r"at names a module twice: \['1', '5', '1'\]"),
        (["1"], 0, r"num_classes must be an integer >= 1, got 0"),
        (["1"], 2.0, r"num_classes must be an integer >= 1, got 2.0"),
        (["1"], True, r"num_classes must be an integer >= 1, got True"),
        (["2"], 10, r"cannot tell how many channels '2' \(ReLU\) outputs; pass example_inputs"),
    ],
)
def test_bad_input(at: Any, num_classes: Any, message: str) -> None:
    net = small_net()
    before = snapshot(net)
    names = structure(net)
    with pytest.raises(ValueError, match=message):
        attach_auxiliary_classifiers(net, at=at, num_classes=num_classes)
    assert_state_unchanged(net, before)
    assert structure(net) == names
    assert hooks_left(net) == []


def test_example_inputs_that_do_not_reach_the_layer() -> None:
    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(1, 4, 1)
            self.unused = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    net = TwoPaths()
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"\['unused'\] gave no tensor output"):
        attach_auxiliary_classifiers(
            net, at=["unused"], num_classes=2, example_inputs=torch.randn(1, 1, 4, 4)
        )
    assert_state_unchanged(net, before)
    assert hooks_left(net) == []


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got function"):
        attach_auxiliary_classifiers(F.relu, at=["1"], num_classes=2)  # type: ignore[arg-type]


def test_a_layer_that_does_not_run_is_reported() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x).mean((2, 3))

    wrapped = attach_auxiliary_classifiers(Skips(), at=["unused"], num_classes=3)
    with pytest.raises(RuntimeError, match=r"\['unused'\] did not run"):
        wrapped(torch.randn(1, 1, 4, 4))
