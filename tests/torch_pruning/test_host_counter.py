"""host_counter: torch-pruning's own counting hooks on a forward the pruner runs anyway.

Its totals and per-layer counts must equal ``tp.utils.count_ops_and_params`` exactly,
over the zoo: the package's models, torchvision's, the test architectures, random CNNs,
and layer types the counter treats specially (attention, RNNs, norms, upsampling).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

from cpmc_plugin.models import create_model, list_models
from cpmc_plugin.torch_pruning.cost.counting import count_model, host_counter
from tests.archs import ARCHS, build
from tests.random_cnns import random_cnn


def counted(model: nn.Module, x: torch.Tensor):
    model.eval()
    with host_counter(model) as tally, torch.no_grad():
        model(x)
    return tally.counts()


def assert_equal_to_host(model: nn.Module, x: torch.Tensor) -> None:
    mine = counted(model, x)
    macs, params = tp.utils.count_ops_and_params(model, x)
    assert mine.macs == float(macs)
    assert mine.params == float(params)
    reference = count_model(model, x)  # the host's counter on a meta twin, layer by layer
    assert mine.layer_macs == reference.layer_macs
    assert mine.layer_params == reference.layer_params


@pytest.mark.parametrize("name", list_models())
def test_registry_models(name: str) -> None:
    torch.manual_seed(0)
    assert_equal_to_host(create_model(name, num_classes=10), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", 64),
        ("mobilenet_v2", 64),
        ("densenet121", 64),
        ("squeezenet1_1", 64),
        ("shufflenet_v2_x0_5", 64),
        ("vit_b_16", 224),
    ],
)
def test_torchvision_models(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    assert_equal_to_host(model, torch.randn(1, 3, size, size))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_test_architectures(arch) -> None:
    assert_equal_to_host(build(arch), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("seed", range(8))
def test_random_cnns(seed: int) -> None:
    model, x = random_cnn(seed)
    assert_equal_to_host(model, x)


class _Mixed(nn.Module):
    """Layers the host counts by their own rules, one reused twice."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = nn.GRUCell(10, 4)
        self.attn = nn.MultiheadAttention(10, 2, batch_first=True)
        self.norm = nn.LayerNorm(10)
        self.group = nn.GroupNorm(2, 4)
        self.up = nn.Upsample(scale_factor=2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.rnn(x)
        seq = self.act(self.norm(seq))
        seq, _ = self.attn(seq, seq, seq)
        hidden = self.cell(seq[:, -1])
        hidden = self.cell(seq[:, 0], hidden)  # called twice: both calls count
        grid = self.up(self.group(hidden.view(-1, 4, 1, 1)))
        return grid.flatten(1)


def test_layers_with_their_own_rules() -> None:
    torch.manual_seed(0)
    assert_equal_to_host(_Mixed(), torch.randn(3, 7, 6))


def test_shared_layers_and_parameters_count_once() -> None:
    shared = nn.Conv2d(4, 4, 3, padding=1)
    tied = nn.Conv2d(4, 4, 1)
    branch_a = nn.Sequential(shared, nn.ReLU())
    branch_b = nn.Sequential(shared, nn.Conv2d(4, 4, 1))
    branch_b[1].weight = tied.weight  # one parameter in two layers
    net = nn.Sequential(nn.Conv2d(3, 4, 1), branch_a, branch_b, tied)
    assert_equal_to_host(net, torch.randn(1, 3, 8, 8))


def test_no_hooks_remain_and_a_failed_forward_leaves_none() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(RuntimeError), host_counter(net), torch.no_grad():
        net(torch.randn(1, 5, 8, 8))
    assert all(not m._forward_hooks for m in net.modules())
