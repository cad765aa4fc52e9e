"""``cpmc_plugin.nni.speedup`` computes what the masked model computes.

The masked model is the model with every mask multiplied into its tensor (what NNI's
wrappers compute). All BatchNorm layers here have non-zero shifts and statistics, so a
masked filter's channel still emits a constant in the masked model unless its norm is
masked too. Masks come from CPMC (which masks the norms) and from NNI's own
``L1NormPruner`` (which does not).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.archs import ARCHS, Arch, build
from tests.helpers import assert_unchanged, masked_copy, model_state

pytest.importorskip("nni")
torchvision = pytest.importorskip("torchvision")

from nni.compression.pruning import L1NormPruner  # noqa: E402

from cpmc_plugin.nni import CPMCPruner, speedup  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
logging.getLogger("nni").setLevel(logging.ERROR)
CONVS = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def shift_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm scale, shift and statistics (as tests/archs.build gives)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.2, 1.0, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.1, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def make_masks(kind: str, model: nn.Module, x: torch.Tensor, config=CONVS):
    if kind == "cpmc":
        pruner = CPMCPruner(model, config, example_inputs=x)
    else:
        pruner = L1NormPruner(model, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


def kept(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).any(1)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink_and_compare(model: nn.Module, masks, x: torch.Tensor) -> list[str]:
    """speedup(model, masks, x); assert it computes the masked model; return its warnings."""
    reference = masked_copy(model, masks)
    before = params(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert speedup(model, masks, x) is model
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert params(model) <= before
    return [str(w.message) for w in caught if "speedup" in str(w.message)]


def assert_all_masked_channels_went(model: nn.Module, masks) -> None:
    for name, targets in masks.items():
        weight = targets["weight"]
        if weight.dim() > 1:
            assert model.get_submodule(name).out_channels == int(kept(weight).sum()), name


# ------------------------------------------- speedup equals the masked model
@pytest.mark.parametrize("kind", ["cpmc", "l1"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_speedup_equals_the_masked_model_on_the_test_architectures(arch: Arch, kind: str) -> None:
    model = build(arch)
    x = arch.example()
    masks = make_masks(kind, model, x)
    before = params(model)
    messages = shrink_and_compare(model, masks, x)
    if kind == "cpmc":  # the norms are masked: every masked channel goes, nothing is kept
        assert messages == []
        assert params(model) < 0.8 * before
        assert_all_masked_channels_went(model, masks)


@pytest.mark.parametrize("kind", ["cpmc", "l1"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_speedup_equals_the_masked_model_on_torchvision(name: str, kind: str) -> None:
    torch.manual_seed(0)
    model = shift_norms(getattr(torchvision.models, name)(num_classes=10))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = make_masks(kind, model, x)
    before = params(model)
    messages = shrink_and_compare(model, masks, x)
    if kind == "cpmc":
        assert messages == []
        assert params(model) < 0.8 * before
        assert_all_masked_channels_went(model, masks)
    elif name == "resnet18":  # L1 masks leave BN shifts that reach zero-padded 3x3 convs
        assert any("kept" in m and "zero-padded" in m for m in messages)


def test_cpmc_masks_zero_the_norm_after_each_masked_filter() -> None:
    model = build(ARCHS[1])  # residual blocks: conv -> BN pairs and tied shortcuts
    masks = make_masks("cpmc", model, ARCHS[1].example())
    pairs = [("stem.0", "stem.1"), ("blocks.2.body.0.0", "blocks.2.body.0.1")]
    pairs += [("blocks.2.shortcut.0", "blocks.2.shortcut.1")]
    for conv, norm in pairs:
        rows = kept(masks[conv]["weight"]).float()
        assert not bool(rows.all()), conv
        assert torch.equal(masks[norm]["weight"], rows) and torch.equal(masks[norm]["bias"], rows)
    # the masked model then outputs exactly 0 in those channels
    twin = masked_copy(model, masks)
    with torch.no_grad():
        out = twin.stem(ARCHS[1].example())
    gone = ~kept(masks["stem.0"]["weight"])
    assert not bool(out[:, gone].any()) and bool(out[:, ~gone].any())


def constant_net(padding: int) -> nn.Sequential:
    """conv -> BN (shift 0.5) -> ReLU -> conv(padding) -> flatten -> Linear."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=padding),
        nn.Flatten(),
        nn.Linear(2 * (2 + 2 * padding) ** 2, 3),
    )
    with torch.no_grad():
        net[1].bias.fill_(0.5)  # a masked filter's channel emits relu(0.5) = 0.5
    return net.eval()


def test_a_constant_into_an_unpadded_conv_is_folded_into_its_bias() -> None:
    net = constant_net(padding=0)
    x = torch.randn(2, 1, 6, 6)
    mask = torch.ones(4, 1, 3, 3)
    mask[[1, 3]] = 0
    w, b = net[3].weight.detach().clone(), net[3].bias.detach().clone()
    messages = shrink_and_compare(net, {"0": {"weight": mask}}, x)
    assert messages == []
    assert net[0].out_channels == 2 and net[3].in_channels == 2
    # conv 3's bias gains 0.5 * (the sum of the kernels that read channels 1 and 3)
    expected = b + 0.5 * (w[:, 1].sum((1, 2)) + w[:, 3].sum((1, 2)))
    torch.testing.assert_close(net[3].bias.detach(), expected)


def test_a_constant_into_a_zero_padded_conv_keeps_its_channel_with_a_warning() -> None:
    net = constant_net(padding=1)
    x = torch.randn(2, 1, 6, 6)
    mask = torch.ones(4, 1, 3, 3)
    mask[[1, 3]] = 0
    messages = shrink_and_compare(net, {"0": {"weight": mask}}, x)
    assert net[0].out_channels == 4  # exact: the channels stay, masked
    assert len(messages) == 1
    assert messages[0].startswith("speedup kept 2 masked channels of 0 (2)")
    assert "that 3 read" in messages[0] and "zero-padded" in messages[0]
    # with the norm masked too, its output is 0 and the channels go
    net = constant_net(padding=1)
    norm = torch.tensor([1.0, 0.0, 1.0, 0.0])
    masks = {"0": {"weight": mask}, "1": {"weight": norm, "bias": norm.clone()}}
    assert shrink_and_compare(net, masks, x) == []
    assert net[0].out_channels == 2 and net[1].num_features == 2


def test_speedup_warns_when_the_smaller_model_computes_something_else() -> None:
    """A GroupNorm normalizes each channel with its group's statistics: a masked (zero)
    channel still counts in them, a removed one does not. speedup removes it (the
    channel and its GroupNorm affine are masked, so it outputs 0) and says that the
    outputs moved."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    filters = torch.ones(4, 1, 3, 3)
    filters[[0, 2]] = 0  # position 0 of both GroupNorm groups
    rows = torch.tensor([0.0, 1.0, 0.0, 1.0])
    masks = {"0": {"weight": filters, "bias": rows}, "1": {"weight": rows, "bias": rows}}
    with pytest.warns(UserWarning, match=r"outputs differ from the masked model's by up to"):
        speedup(net, masks, torch.randn(2, 1, 6, 6))
    assert net[0].out_channels == 2 and net[1].num_groups == 2


# ------------------------------------------------------------ grouped convs
class GroupedNet(nn.Module):
    """NNI's test model in shape: conv -> bn -> relu -> grouped conv (groups=4) -> ... -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, groups=4)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


XG = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def grouped_net(seed: int) -> GroupedNet:
    torch.manual_seed(seed)
    return shift_norms(GroupedNet(), seed)


def blocks_alike(mask: torch.Tensor, blocks: int) -> bool:
    """The same output positions are kept in every one of ``blocks`` equal blocks."""
    rows = kept(mask).view(blocks, -1)
    return bool((rows == rows[0]).all())


@pytest.mark.parametrize("seed", range(10))
def test_cpmc_masks_respect_grouped_convs_and_speedup_keeps_the_function(seed: int) -> None:
    model = grouped_net(seed)
    masks = make_masks("cpmc", model, XG)
    # conv1 feeds conv2's 4 groups (2 channels each), conv2 writes 4 groups of 4
    assert blocks_alike(masks["conv1"]["weight"], 4)
    assert blocks_alike(masks["conv2"]["weight"], 4)
    assert int(kept(masks["conv1"]["weight"]).sum()) == 4  # floor(0.5 * 8): 1 of 2 per block
    assert int(kept(masks["conv2"]["weight"]).sum()) == 8  # 2 of 4 per group
    assert shrink_and_compare(model, masks, XG) == []
    assert (model.conv1.out_channels, model.conv2.in_channels) == (4, 4)
    assert (model.conv2.out_channels, model.conv2.groups) == (8, 4)
    assert model.fc1.in_features == 8 * 25


@pytest.mark.parametrize("seed", range(10))
def test_l1_masks_on_a_grouped_conv_shrink_without_breaking_it(seed: int) -> None:
    model = grouped_net(seed)
    masks = make_masks("l1", model, XG)
    shrink_and_compare(model, masks, XG)
    assert model.conv2.groups == 4
    assert model.conv2.in_channels % 4 == 0 and model.conv2.out_channels % 4 == 0
    assert model.conv2.weight.shape[1] == model.conv2.in_channels // 4


def test_a_refused_speedup_on_the_grouped_net_leaves_it_exactly_as_it_was() -> None:
    """speedup is atomic: a failure in torch-pruning or in the smaller model's forward
    restores every tensor (masks taken back out) and every module's shapes."""

    class HardCoded(GroupedNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            return self.fc2(F.relu(self.fc1(x.view(-1, 16 * 5 * 5))))  # NNI's MNIST style

    torch.manual_seed(0)
    model = shift_norms(HardCoded())
    x = torch.randn(3, 1, 28, 28)
    masks = make_masks("cpmc", model, x)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"speedup was undone.*conv2 \(16, 2, 3, 3\) -> \(8, 1"):
        speedup(model, masks, x)
    assert_unchanged(model, before)
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.groups) == (8, 16, 4)
    assert model(x).shape == (3, 10)


def test_a_flops_budget_on_the_grouped_net_respects_its_groups() -> None:
    import torch_pruning as tp

    model = grouped_net(0)
    before = tp.utils.count_ops_and_params(model, XG)[0]
    config = [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.75}]
    pruner = CPMCPruner(model, config, example_inputs=XG, flops_reduction=0.3)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert blocks_alike(masks["conv1"]["weight"], 4) and blocks_alike(masks["conv2"]["weight"], 4)
    assert shrink_and_compare(model, masks, XG) == []
    assert model.conv2.groups == 4
    # the budget's accuracy is the planner's (tests/torch_pruning/test_pruner_*); here: it shrank
    assert tp.utils.count_ops_and_params(model, XG)[0] < 0.9 * before


class ConcatIntoGrouped(nn.Module):
    """Two convs concatenated into a grouped conv: each feeds only 2 of its 4 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(torch.relu(self.g(y)).mean((2, 3)))


def test_channels_that_cannot_leave_a_grouped_conv_evenly_are_kept_with_a_warning() -> None:
    """Removing channels of ``a`` alone would take inputs from 2 of g's 4 groups only:
    CPMC leaves ``a`` and ``b`` whole (warned); L1's masks on them stay masked (warned)."""
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    model = ConcatIntoGrouped().eval()
    with pytest.warns(UserWarning, match=r"CPMCPruner leaves a whole: a grouped conv reads"):
        masks = make_masks("cpmc", model, x)
    assert bool(kept(masks["a"]["weight"]).all()) and bool(kept(masks["b"]["weight"]).all())
    assert shrink_and_compare(model, masks, x) == []
    assert (model.g.in_channels, model.g.out_channels, model.g.groups) == (16, 8, 4)

    torch.manual_seed(0)
    model = ConcatIntoGrouped().eval()
    messages = shrink_and_compare(model, make_masks("l1", model, x), x)
    assert len(messages) == 1 and "kept 16 masked channels of a (4), b (4), g (8)" in messages[0]
    assert (model.a.out_channels, model.b.out_channels, model.g.groups) == (8, 8, 4)
