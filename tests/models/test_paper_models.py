"""The paper models registry: builders, parameter counts, pruning to 50 % FLOPs, errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCPruner
from cpmc_plugin.models import create_model, densenet40, list_models, resnet20, vgg16

NAMES = [
    "densenet40",
    "resnet110",
    "resnet164",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg16",
]

# Exact counts of this implementation (10 classes, 3 input channels); literature figure
# in the comment, each checked to be within 10 %.
PARAMS = {
    "resnet20": (272_474, 0.27e6),  # He et al. 2016: 0.27M
    "resnet32": (466_906, 0.46e6),  # He et al. 2016: 0.46M
    "resnet56": (855_770, 0.85e6),  # He et al. 2016: 0.85M
    "resnet110": (1_730_714, 1.7e6),  # He et al. 2016: 1.7M
    "resnet164": (1_704_154, 1.7e6),  # He et al. 2016 (bottleneck): 1.7M
    "densenet40": (1_059_298, 1.0e6),  # Huang et al. 2017 (k=12): 1.0M
    "vgg16": (14_987_722, 15.0e6),  # network slimming / CPMC CIFAR VGG-16: ~15M
}


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models_is_sorted_and_complete() -> None:
    assert list_models() == NAMES == sorted(NAMES)
    assert set(PARAMS) == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_literature(name: str) -> None:
    exact, literature = PARAMS[name]
    count = n_params(create_model(name))
    assert count == exact
    assert abs(count - literature) <= 0.1 * literature


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_classifier(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    # the final Linear is exposed as model.classifier
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model.classifier is linears[-1]
    assert model.classifier.out_features == 7


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [28, 8])
def test_one_channel_small_inputs(name: str, size: int) -> None:
    model = create_model(name, num_classes=10, in_channels=1)
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_init(name: str) -> None:
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, nn.Conv2d):  # Kaiming fan-out: std = sqrt(2 / (k * k * cout))
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            expected = (2 / fan_out) ** 0.5
            if m.weight.numel() >= 1000:
                assert abs(m.weight.std().item() / expected - 1) < 0.15


def prune_half(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    classifier = model.classifier
    assert isinstance(classifier, nn.Linear)
    pruner = CPMCPruner(model, x, flops_reduction=0.5, ignored_layers=[classifier])
    pruner.step()
    assert abs(pruner.report().macs_reduction - 0.5) <= 0.01
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], num_classes)


# resnet110 and resnet164 take 5-10 s each on 2 CPU cores
PRUNE_NAMES = [
    pytest.param(n, marks=pytest.mark.slow) if n in ("resnet110", "resnet164") else n for n in NAMES
]


@pytest.mark.parametrize("name", PRUNE_NAMES)
def test_prune_to_half_flops(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    prune_half(model, torch.randn(2, 3, 32, 32), 10)


@pytest.mark.parametrize("builder", [resnet20, densenet40], ids=["resnet20", "densenet40"])
def test_prune_one_channel_28x28(builder: Callable[..., nn.Module]) -> None:
    torch.manual_seed(0)
    model = builder(num_classes=10, in_channels=1)
    prune_half(model, torch.randn(2, 1, 28, 28), 10)


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet57'; known models: densenet40, "):
        create_model("resnet57")
    with pytest.raises(TypeError, match="model name must be a str, got int"):
        create_model(20)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ResNet20", "RESNET20", " resnet20 "])
def test_names_are_case_insensitive(name: str) -> None:
    model = create_model(name, num_classes=3)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("arg", ["num_classes", "in_channels"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10", None])
def test_bad_kwargs(arg: str, value: object) -> None:
    # a wrong type is a TypeError, a wrong value (an int below 1) a ValueError
    error = ValueError if isinstance(value, int) and not isinstance(value, bool) else TypeError
    with pytest.raises(error, match=f"{arg} must be an integer >= 1"):
        create_model("resnet20", **{arg: value})
    with pytest.raises(error, match=arg):
        vgg16(**{arg: value})  # type: ignore[arg-type]
    with pytest.raises(error, match=arg):
        create_model("tv:resnet18", **{arg: value})


def test_torchvision_prefix() -> None:
    pytest.importorskip("torchvision")
    model = create_model("tv:resnet18", num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(create_model("TV:ResNet18", in_channels=3), nn.Module)
    assert not any(n.startswith("tv:") for n in list_models())


def test_torchvision_errors() -> None:
    pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnet57'.*tv:resnet"):
        create_model("tv:resnet57")
    with pytest.raises(ValueError, match="in_channels must be 3"):
        create_model("tv:resnet18", in_channels=1)


def test_torchvision_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ValueError, match="pip install torchvision"):
        create_model("tv:resnet18")
