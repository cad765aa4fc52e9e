"""The project's own equivalents of the torch-pruning tests where CPMC differed from the host.

``benchmarks/host_test_suite.py`` runs torch-pruning's ``tests/`` with CPMC substituted.
Each test here rebuilds, with its own small model, one host test
where CPMC failed or had to refuse, and asserts what must hold for CPMC: the prune
runs, each step meets its budget (within 0.5 pp or one channel's cost), the model
runs with its output shapes, the train/eval mode is the caller's, and a refusal names
what to do and leaves the model exactly as it was.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin import CPMCImportance, CPMCPruner
from tests.helpers import assert_unchanged, budget_tolerance, model_state


def output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(out)]


def assert_step_met(pruner: CPMCPruner, step: int) -> None:
    """The MACs counted now are the target of ``step``, within 0.5 pp or one channel."""
    base = pruner.report().macs_before
    macs, _ = tp.utils.count_ops_and_params(pruner.model, pruner.example_inputs)
    reached = 1 - macs / base
    target = 1 - pruner.target_cost(step) / base
    tolerance = budget_tolerance(pruner)
    assert abs(reached - target) <= tolerance + 1e-9, (step, reached, target, tolerance)


# ------------------------------------------------------------ test_concat.py
class WideAndDeep(nn.Module):
    """A linear path and an MLP with BatchNorm1d, concatenated into one output unit."""

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        self.deep = nn.Sequential(
            nn.Linear(features, 48),
            nn.BatchNorm1d(48),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(48, 24),
            nn.BatchNorm1d(24),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(24, 1),
        )
        self.wide = nn.Linear(features, 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        return torch.sigmoid(self.head(torch.cat([self.wide(x), self.deep(x)], dim=-1)))


def test_train_mode_bn1d_batch_one_prunes_iteratively_and_keeps_the_callers_mode() -> None:
    torch.manual_seed(0)
    net = WideAndDeep().train()
    x = torch.randn(1, 32)  # a batch of one: BatchNorm1d cannot run on it in train mode
    pruner = CPMCPruner(net, x, flops_reduction=0.5, iterative_steps=5)
    for step in range(1, 6):
        pruner.step()
        assert_step_met(pruner, step)
        assert all(m.training for m in net.modules())  # restored, not left in eval
        # no forward of CPMC's ran in train mode: no BatchNorm statistic moved
        assert all(
            int(m.num_batches_tracked) == 0 for m in net.modules() if isinstance(m, nn.BatchNorm1d)
        )
    assert net.deep[0].out_features < 48 and net.deep[4].out_features < 24
    assert output_shapes(net, x) == [(1, 1)]
    assert net(torch.randn(4, 32)).shape == (4, 1)  # training goes on with real batches
    # torch-pruning leaves the model in eval mode (DependencyGraph._trace), and the host
    # test relies on that when it calls model(x) after step(); CPMC keeps the caller's mode
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net(x)


# ------------------------------------------------------------ test_split.py
class ThreeWaySplit(nn.Module):
    """One wide block split three ways; one branch layer runs twice; three outputs."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, 4 * width, 1),
            nn.BatchNorm2d(4 * width),
        )
        self.shared = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.wide = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(x)
        a = self.shared[0].in_channels
        x1, x2, x3 = torch.split(x, [a, a, self.wide[0].in_channels], dim=1)
        return self.shared(x1), self.shared(x2), self.wide(x3)


def test_split_outputs_kept_when_their_layers_are_ignored() -> None:
    torch.manual_seed(0)
    net = ThreeWaySplit()
    x = torch.randn(1, 16, 7, 7)
    before = output_shapes(net, x)
    pruner = CPMCPruner(net, x, flops_reduction=0.75, ignored_layers=[net.shared[0], net.wide[0]])
    pruner.step()
    assert_step_met(pruner, 1)
    assert output_shapes(net, x) == before == [(1, 16, 7, 7)] * 3
    assert net.stem[3].out_channels < 64  # the split block itself was pruned


def test_split_outputs_that_would_shrink_are_refused_unchanged() -> None:
    torch.manual_seed(0)
    net = ThreeWaySplit()
    x = torch.randn(1, 16, 7, 7)
    state = model_state(net)
    with pytest.raises(ValueError, match=r"output.*ignored_layers.*unchanged"):
        CPMCPruner(net, x, flops_reduction=0.75).step()
    assert_unchanged(net, state)


def test_split_refusal_names_every_layer_whose_output_changed() -> None:
    """One refusal names all three outputs and the conv making each (not its BatchNorm);
    ignoring exactly those layers then lets the same budget through."""
    torch.manual_seed(0)
    net = ThreeWaySplit()
    x = torch.randn(1, 16, 7, 7)
    state = model_state(net)
    with pytest.raises(ValueError) as refused:
        CPMCPruner(net, x, flops_reduction=0.75).step()
    assert_unchanged(net, state)
    message = str(refused.value)
    for index, layer in [(0, "shared.0"), (1, "shared.0"), (2, "wide.0")]:
        assert re.search(
            rf"output {index} from \(1, 16, 7, 7\) to .*?'{layer}' \(Conv2d\)", message
        )
    named = set(re.findall(r"'((?:shared|wide)\.\d+)'", message))
    assert named == {"shared.0", "wide.0"}, message
    modules = dict(net.named_modules())
    pruner = CPMCPruner(net, x, flops_reduction=0.75, ignored_layers=[modules[n] for n in named])
    pruner.step()
    assert_step_met(pruner, 1)
    assert output_shapes(net, x) == [(1, 16, 7, 7)] * 3


# ------------------------------------------------------------ test_concat_split.py
class ConcatSplit(nn.Module):
    """A split whose halves meet again: one in a concat, one in a residual add."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 1),
            nn.BatchNorm2d(2 * width),
        )
        self.right = nn.Sequential(
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width),
        )
        self.merge = nn.Sequential(nn.Conv2d(2 * width, width, 1), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.right(x)
        y = self.left(x)
        first = self.merge[0].in_channels - self.right[-1].num_features
        y1, y2 = torch.split(y, (first, self.left[-1].num_features - first), 1)
        return self.merge(torch.cat([y1, r], dim=1)) + y2


def test_concat_split_budget_met_or_refused_with_the_reachable_maximum() -> None:
    x = torch.randn(1, 16, 7, 7)

    def build() -> ConcatSplit:
        torch.manual_seed(0)
        return ConcatSplit()

    net = build()
    keep = [net.merge[0], net.left[3]]  # the layers that produce the output
    state = model_state(net)
    with pytest.raises(ValueError, match=r"at most (\d+\.\d+) % is reachable") as refused:
        CPMCPruner(net, x, flops_reduction=0.9, ignored_layers=keep)
    assert_unchanged(net, state)
    reachable = float(re.search(r"at most (\d+\.\d+) %", str(refused.value)).group(1)) / 100
    assert 0.5 < reachable < 0.9
    net = build()
    pruner = CPMCPruner(
        net, x, flops_reduction=reachable - 0.01, ignored_layers=[net.merge[0], net.left[3]]
    )
    pruner.step()  # the reachable maximum the refusal states is reachable
    assert_step_met(pruner, 1)
    assert output_shapes(net, x) == [(1, 16, 7, 7)]


# ------------------------------------------------------------ test_cascaded_concat.py
class CascadedConcat(nn.Module):
    """Four branches of different widths concatenated in three nested steps."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()

        def branch(*widths: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for cin, cout in zip((width, *widths[:-1]), widths, strict=True):
                layers += [nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.GELU()]
            return nn.Sequential(*layers[:-1])

        self.b1 = branch(width, width)
        self.b2 = branch(2 * width, 2 * width)
        self.b3 = branch(3 * width)
        self.b4 = branch(6 * width)
        self.out = nn.Conv2d(12 * width, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.b1(x), self.b2(x)], dim=1)
        y = torch.cat([y, self.b3(x)], dim=1)
        return self.out(torch.cat([y, self.b4(x)], dim=1))


def test_cascaded_concat_meets_every_interactive_step() -> None:
    torch.manual_seed(0)
    net = CascadedConcat()
    x = torch.randn(1, 8, 7, 7)
    pruner = CPMCPruner(net, x, flops_reduction=0.75, iterative_steps=5, ignored_layers=[net.out])
    for step in range(1, 6):
        for group in pruner.step(interactive=True):
            group.prune()
        assert_step_met(pruner, step)
        assert output_shapes(net, x) == [(1, 10, 7, 7)]
    assert net.out.in_channels < 96


# ------------------------------------------------------------ test_non_feature_dim_cat.py
class HeightConcat(nn.Module):
    """Two paths concatenated along the height, mixed, and split back along the height."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def path() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 1),
                nn.BatchNorm2d(width),
                nn.GELU(),
                nn.Conv2d(width, width, 1),
                nn.BatchNorm2d(width),
            )

        self.p1, self.p2 = path(), path()
        self.mix = nn.Conv2d(width, width, 1)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.p1(x), self.p2(x)
        y = self.mix(torch.cat([a, b], dim=2))
        top, _ = torch.split(y, [a.shape[2], b.shape[2]], dim=2)
        return self.out(top)


def test_concat_along_the_height_ties_the_channels_and_meets_the_budget() -> None:
    torch.manual_seed(0)
    net = HeightConcat()
    x = torch.randn(1, 16, 7, 7)
    pruner = CPMCPruner(net, x, flops_reduction=0.5, ignored_layers=[net.out])
    pruner.step()
    assert_step_met(pruner, 1)
    assert output_shapes(net, x) == [(1, 16, 7, 7)]
    # a concat along the height adds no channels: both paths end with the same width
    assert net.p1[3].out_channels == net.p2[3].out_channels == net.mix.in_channels


# ------------------------------------------------------------ test_pruner.py / test_isomorphic.py
class TransposeNet(nn.Module):
    """Conv, ConvTranspose (upsampling x2), conv; BatchNorm and ReLU after each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 64, 2, stride=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.up(x)))
        return F.relu(self.bn3(self.conv3(x)))


@pytest.mark.parametrize("isomorphic", [False, True])
def test_conv_transpose_prunes_interactively_isomorphic_or_not(isomorphic: bool) -> None:
    torch.manual_seed(0)
    net = TransposeNet()
    x = torch.randn(1, 3, 16, 16)
    pruner = CPMCPruner(
        net,
        x,
        CPMCImportance(x, p=2),
        flops_reduction=0.75,
        iterative_steps=5,
        ignored_layers=[net.conv3],
        isomorphic=isomorphic,
    )
    for step in range(1, 6):
        for group in pruner.step(interactive=True):
            group.prune()
        assert_step_met(pruner, step)
        assert output_shapes(net, x) == [(1, 8, 32, 32)]
    # the ConvTranspose's weight is [in, out, k, k]: both of its sides were pruned
    assert net.up.weight.shape[:2] == (net.conv1.out_channels, net.up.out_channels)
    assert net.conv1.out_channels < 16 and net.up.out_channels < 64


def test_conv_transpose_output_layer_must_be_ignored() -> None:
    torch.manual_seed(0)
    net = TransposeNet()
    x = torch.randn(1, 3, 16, 16)
    pruner = CPMCPruner(net, x, flops_reduction=0.75, iterative_steps=5, isomorphic=True)
    for _ in range(5):
        state = model_state(net)
        try:
            for group in pruner.step(interactive=True):
                group.prune()
        except ValueError as refused:
            assert re.search(r"'conv3' \(Conv2d\).*output.*ignored_layers", str(refused))
            break
    else:
        pytest.fail("no step asked for conv3's channels, so nothing was refused")
    # the refused step is undone exactly, even the groups the caller had pruned already
    assert_unchanged(net, state)
    assert output_shapes(net, x) == [(1, 8, 32, 32)]


# ------------------------------------------------------------ test_regularization.py
class DenseBlockNet(nn.Module):
    """A stem, two dense layers (each concatenated to its input) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.d1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.d2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.d1(x)], dim=1)
        x = torch.cat([x, self.d2(x)], dim=1)
        return self.fc(x.mean((2, 3)))


def test_host_regularization_loop_runs_with_cpmc() -> None:
    torch.manual_seed(0)
    net = DenseBlockNet()
    x = torch.randn(2, 3, 8, 8)
    pruner = CPMCPruner(net, x, flops_reduction=0.5, iterative_steps=3, ignored_layers=[net.fc])
    for step in range(1, 4):
        net.zero_grad()
        net(x).sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        pruner.update_regularizer()  # the host's calls, as GroupNormPruner users write them
        pruner.regularize(net)
        # CPMC adds no penalty: the gradients are untouched
        assert all(torch.equal(p.grad, grads[n]) for n, p in net.named_parameters())
        for group in pruner.step(interactive=True):
            group.prune()
        assert_step_met(pruner, step)
    assert output_shapes(net, x) == [(2, 10)]


# ------------------------------------------------------------ test_importance_reduction.py
def test_importance_on_a_hand_made_group_needs_inputs_for_its_flops_term() -> None:
    torch.manual_seed(0)
    net = DenseBlockNet()
    x = torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=x)
    group = graph.get_pruning_group(net.stem[0], tp.prune_conv_out_channels, idxs=list(range(8)))
    with pytest.raises(ValueError, match=r"needs example_inputs.*or set beta=0"):
        CPMCImportance()(group)
    scores = CPMCImportance(x)(group)
    assert scores.shape == (8,) and torch.isfinite(scores).all()
    without_flops = CPMCImportance(beta=0)(group)
    assert without_flops.shape == (8,) and torch.isfinite(without_flops).all()
