"""Auxiliary classifiers: shapes, training on digits, a clean detach, the loss, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import AuxiliaryClassifiers, attach_auxiliary_classifiers, combined_loss
from tests.helpers import assert_unchanged, digits_split, model_state

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
    before = model_state(net)
    wrapped = attach_auxiliary_classifiers(
        net, at=["2", "6"], num_classes=10, example_inputs=torch.randn(2, 1, 8, 8)
    )
    assert [h.fc.in_features for h in wrapped.heads] == [8, 16]  # from the traced shapes
    assert_unchanged(net, before)  # the probe ran in eval mode: BN stats untouched
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


# ---------------------------------------------------------------- channels from the module tree
class ConcatBlock(nn.Module):
    """Two branches of 3 and 5 channels concatenated: 8 output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Sequential(nn.Conv2d(2, 5, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class GatedResidual(nn.Module):
    """relu(bn(conv(x)) * sigmoid(gate) + x): a residual add and an SE-style gate, 4 channels.

    Its last registered layer (``gate``, 1 channel) is not the one that sets the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gate = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x)) * torch.sigmoid(self.gate(x))
        return F.relu(out + x)


class DenseLayer(nn.Module):
    """A DenseNet layer: its output has its input's channels plus 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], 1)


class Branching(nn.Module):
    """Data-dependent control flow: symbolic tracing cannot follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x


class Flattens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x


def blocks_net() -> nn.Sequential:
    """Custom blocks in a Sequential, on 1x6x6 inputs; the comments give each output's channels."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),  # 0: 2
        ConcatBlock(),  # 1: 3 + 5 = 8
        nn.Conv2d(8, 4, 1),  # 2: 4
        GatedResidual(),  # 3: 4
        nn.Sequential(GatedResidual(), nn.ReLU(), nn.Dropout()),  # 4: 4
        DenseLayer(4),  # 5: 4 + 2 = 6, depends on its input
        nn.Identity(),  # 6: 6
        nn.AdaptiveAvgPool2d(1),  # 7: 6
        nn.Flatten(),  # 8
        nn.Linear(6, 3),  # 9: 3
    )


@pytest.mark.parametrize(
    ("at", "channels"),
    [
        (["1"], [8]),  # the concatenation along the channels: 3 + 5
        (["1.b"], [5]),  # a Sequential: its last channel-setting child
        (["1.b.1"], [5]),  # a ReLU in a Sequential: the layer before it
        (["3"], [4]),  # relu(bn * sigmoid(gate) + x): bn's 4, not the last registered gate's 1
        (["4"], [4]),  # a Sequential ending in ReLU and Dropout after a custom block
        (["4.1", "4.2", "9"], [4, 4, 3]),
        (["3.bn", "1.a", "1.b.0", "0"], [4, 3, 5, 2]),  # layers with their own attribute
    ],
)
def test_channels_of_containers_read_from_the_module_tree(
    at: list[str], channels: list[int]
) -> None:
    net = blocks_net().eval()
    wrapped = attach_auxiliary_classifiers(net, at=at, num_classes=3)
    assert [h.fc.in_features for h in wrapped.heads] == channels
    _, aux = wrapped(torch.randn(2, 1, 6, 6))  # the heads fit what the layers output
    assert [a.shape for a in aux] == [(2, 3)] * len(at)
    wrapped.detach()
    measured = attach_auxiliary_classifiers(
        net, at=at, num_classes=3, example_inputs=torch.randn(1, 1, 6, 6)
    )
    assert [h.fc.in_features for h in measured.heads] == channels  # what a forward measures
    measured.detach()


HINT = (
    r"; pass example_inputs=torch.randn\(1, 1, H, W\) \(a batch the model accepts; "
    r"its first layer '0' has in_channels=1\)$"
)


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (["5"], r"'5' \(DenseLayer\) outputs: the channels '5' outputs depend on its input 'x'"),
        # an Identity and a pooling after the dense layer: still its input's channels
        (["7"], r"'7' \(AdaptiveAvgPool2d\) outputs: the channels '5' outputs depend on its input"),
        (["8"], r"'8' \(Flatten\) outputs: '8' \(Flatten\) has no channel count"),
    ],
)
def test_channels_the_module_tree_does_not_tell(at: list[str], reason: str) -> None:
    net = blocks_net()
    before = model_state(net)
    with pytest.raises(
        ValueError, match=r"^cannot tell how many channels " + reason + r".*" + HINT
    ):
        attach_auxiliary_classifiers(net, at=at, num_classes=3)
    assert_unchanged(net, before)
    assert hooks_left(net) == []
    # with the example_inputs the error asks for, the count is measured
    wrapped = attach_auxiliary_classifiers(
        net, at=at, num_classes=3, example_inputs=torch.randn(1, 1, 6, 6)
    )
    assert [h.fc.in_features for h in wrapped.heads] == [6]


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (Branching(), r"'0' cannot be traced symbolically \(TraceError: "),
        (Pair(), r"'0' returns tuple, not one tensor"),
        (Flattens(), r"'0' ends in 'flatten', whose channel count the module tree does not show"),
    ],
)
def test_custom_blocks_that_cannot_be_read(block: nn.Module, reason: str) -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.body = nn.Sequential(block)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(
        ValueError, match=r"'body' \(Sequential\) outputs: " + reason.replace("'0'", "'body.0'")
    ):
        attach_auxiliary_classifiers(Wrapper(), at=["body"], num_classes=2)


def test_a_relu_outside_a_sequential_is_not_guessed() -> None:
    net = GatedResidual()
    net.act = nn.ReLU()  # registered, but where it runs the tree does not say
    with pytest.raises(
        ValueError,
        match=r"'act' \(ReLU\) keeps its input's channels, and its input is not visible in the "
        r"module tree; pass example_inputs=torch.randn\(1, 4, H, W\)",
    ):
        attach_auxiliary_classifiers(net, at=["act"], num_classes=2)


def test_paper_resnet_stages_without_example_inputs() -> None:
    """The README's call: attach_auxiliary_classifiers(model, at=["layer1", "layer2"], ...)."""
    from cpmc_plugin.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    names = ["layer1", "layer2", "layer3", "layer2.0", "layer2.0.shortcut"]
    wrapped = attach_auxiliary_classifiers(model, at=names, num_classes=10)
    # resnet20: stages of 16, 32 and 64 channels; layer2.0 is the block that widens to 32
    assert [h.fc.in_features for h in wrapped.heads] == [16, 32, 64, 32, 32]
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)  # covers the heads too
    heads_before = [h.fc.weight.detach().clone() for h in wrapped.heads]
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    combined_loss(wrapped(x), y).backward()
    optimizer.step()
    for before, head in zip(heads_before, wrapped.heads, strict=True):
        assert not torch.equal(before, head.fc.weight)


def test_torchvision_resnet18_stages_without_example_inputs() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    names = ["layer1", "layer2", "layer3", "layer4", "layer3.0.downsample"]
    wrapped = attach_auxiliary_classifiers(model, at=names, num_classes=10)
    assert [h.fc.in_features for h in wrapped.heads] == [64, 128, 256, 512, 256]
    _, aux = wrapped(torch.randn(1, 3, 32, 32))
    assert [a.shape for a in aux] == [(1, 10)] * 5


def test_a_layer_pruned_after_attaching_gets_a_clear_error() -> None:
    net = small_net().eval()
    wrapped = attach_auxiliary_classifiers(net, at=["1"], num_classes=10)
    # prune channels 6 and 7 of conv 0 / BN 1 by hand, and the inputs of conv 4
    conv, bn, nxt = net[0], net[1], net[4]
    conv.weight = nn.Parameter(conv.weight[:6].detach())
    conv.out_channels = 6
    for key in ("weight", "bias"):
        setattr(bn, key, nn.Parameter(getattr(bn, key)[:6].detach()))
    bn.running_mean, bn.running_var = bn.running_mean[:6], bn.running_var[:6]
    bn.num_features = 6
    nxt.weight = nn.Parameter(nxt.weight[:, :6].detach())
    nxt.in_channels = 6
    with pytest.raises(
        ValueError,
        match=r"the auxiliary classifier on '1' was built for 8 channels \(read from '1': 8\), "
        r"but '1' outputs 6; attach it again with example_inputs=torch.randn\(1, 1, H, W\)",
    ):
        wrapped(torch.randn(2, 1, 8, 8))


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


@pytest.mark.parametrize(
    ("weight", "error"), [(-0.1, ValueError), (float("nan"), ValueError), ("0.3", TypeError)]
)
def test_combined_loss_bad_weight(weight: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"aux_weight must be a finite number >= 0"):
        combined_loss(torch.zeros(1, 2), torch.tensor([0]), aux_weight=weight)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("at", "num_classes", "message"),
    [
        (["nope"], 10, r"at names modules the model does not have: \['nope'\]"),
        (["1", "99"], 10, r"at names modules the model does not have: \['99'\]"),
        ([""], 10, r"at names modules the model does not have: \[''\]"),
        ([], 10, r"at must be a non-empty list of module names, got \[\]"),
        (["1", "5", "1"], 10, r"at names a module twice: \['1', '5', '1'\]"),
        (["1"], 0, r"num_classes must be an integer >= 1, got 0"),
        (
            ["11"],
            10,
            r"cannot tell how many channels '11' \(Flatten\) outputs: '11' \(Flatten\) has no "
            r"channel count; pass example_inputs=torch.randn\(1, 1, H, W\) \(a batch the model "
            r"accepts; its first layer '0' has in_channels=1\)",
        ),
    ],
)
def test_bad_input(at: Any, num_classes: Any, message: str) -> None:
    net = small_net()
    before = model_state(net)
    names = structure(net)
    with pytest.raises(ValueError, match=message):
        attach_auxiliary_classifiers(net, at=at, num_classes=num_classes)
    assert_unchanged(net, before)
    assert structure(net) == names
    assert hooks_left(net) == []


@pytest.mark.parametrize(
    ("at", "num_classes", "message"),
    [
        ("1", 10, r"at must be a non-empty list of module names, got '1'"),
        (["1"], 2.0, r"num_classes must be an integer >= 1, got 2.0"),
        (["1"], True, r"num_classes must be an integer >= 1, got True"),
    ],
)
def test_wrong_types(at: Any, num_classes: Any, message: str) -> None:
    """A value of the wrong type is a TypeError (the package's one validator rule)."""
    net = small_net()
    before = model_state(net)
    with pytest.raises(TypeError, match=message):
        attach_auxiliary_classifiers(net, at=at, num_classes=num_classes)
    assert_unchanged(net, before)
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
    before = model_state(net)
    with pytest.raises(ValueError, match=r"\['unused'\] gave no tensor output"):
        attach_auxiliary_classifiers(
            net, at=["unused"], num_classes=2, example_inputs=torch.randn(1, 1, 4, 4)
        )
    assert_unchanged(net, before)
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
