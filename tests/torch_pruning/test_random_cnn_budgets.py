"""Every budget on random CNNs is met or cleanly refused; the planner's cost model is exact.

The property test prunes seeded random CNNs (``tests/random_cnns.py``) to a seeded
FLOPs or parameter budget in [0.1, 0.8]. Each result is met within max(0.5 pp, one
channel's grain) and the pruned model runs with finite outputs of the same shape, or
the step is refused with a ``ValueError`` and the model is exactly as it was. Any
other exception fails. The targeted tests below pin each cause found with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from cpmc_plugin import CPMCPruner
from cpmc_plugin.core.budget import ChannelGroup, CostTerm, plan_removal
from cpmc_plugin.torch_pruning.planning.groups import planner_groups
from tests.helpers import assert_unchanged, budget_tolerance, model_state
from tests.random_cnns import BLOCKS, random_case, random_cnn

DEFAULT_SEEDS = range(60)
SLOW_SEEDS = range(60, 260)


def check_case(seed: int) -> str:
    """Prune random case ``seed``; assert the contract; return "met" or "refused"."""
    case = random_case(seed)
    model, x = case.model, case.example_inputs
    with torch.no_grad():
        expected_shape = model(x).shape
    state = model_state(model)
    try:
        pruner = CPMCPruner(model, x, ignored_layers=[case.head], **case.budget)
        pruner.step()
    except ValueError as error:
        assert str(error), "a refusal must say why"
        assert_unchanged(model, state, model.description)
        return "refused"
    report = pruner.report()
    if case.metric == "macs":
        initial, now = report.macs_before, report.macs_after
    else:
        initial, now = report.params_before, report.params_after
    target = initial * (1 - case.reduction)
    tolerance = pruner.tolerance
    assert abs(now - target) <= tolerance + 1e-6, (
        model.description,
        case.metric,
        case.reduction,
        1 - now / initial,
        tolerance / initial,
    )
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected_shape, model.description
    assert torch.isfinite(out).all(), model.description
    return "met"


# ------------------------------------------------------------------ the generator
def test_generator_is_deterministic_and_leaves_global_rng_alone() -> None:
    rng = torch.random.get_rng_state()
    a, b = random_case(7), random_case(7)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert a.model.description == b.model.description
    assert (a.metric, a.reduction) == (b.metric, b.reduction)
    assert torch.equal(a.example_inputs, b.example_inputs)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert random_case(8).model.description != a.model.description


def test_generator_covers_every_block_head_and_the_failing_mix() -> None:
    descriptions = [random_cnn(seed)[0].description for seed in DEFAULT_SEEDS]
    kinds = {
        kind.split("/")[0] for d in descriptions for kind in d.split(": ")[1].split(" |")[0].split()
    }
    assert kinds == set(BLOCKS)
    assert any("conv head" in d for d in descriptions)
    assert any("flatten" in d for d in descriptions) and any("pool" in d for d in descriptions)
    assert any("[]" not in d and "linear head" in d for d in descriptions)  # hidden Linear
    mixes = [
        d
        for d in descriptions
        if any(f"{k} dense" in d or f"{k}/2 dense" in d for k in ("depthwise", "residual"))
    ]
    assert len(mixes) >= 10, len(mixes)
    budgets = [random_case(seed) for seed in DEFAULT_SEEDS]
    assert {c.metric for c in budgets} == {"macs", "params"}
    assert all(0.1 <= c.reduction <= 0.8 for c in budgets)
    # small enough to prune fast: 1x3x16x16 inputs and at most 32 channels per block
    model, x = random_cnn(0)
    assert tuple(x.shape) == (1, 3, 16, 16)


# ------------------------------------------------------------------ the property
@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
def test_random_cnn_budget_met_or_refused(seed: int) -> None:
    check_case(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_random_cnn_budget_met_or_refused_slow(seed: int) -> None:
    check_case(seed)


def test_most_random_budgets_are_met() -> None:
    """Refusals are the exception (grouped convs reading a concatenation), not the rule."""
    outcomes = [check_case(seed) for seed in range(0, 60, 3)]
    assert outcomes.count("met") >= 16, outcomes


def _predicted_and_counted(pruner: CPMCPruner) -> tuple[float, float, float]:
    """The cost the planner predicts for its plan, and the count once it is applied by hand.

    The plan is applied group by group without any correction, so this checks the cost
    model itself (the pruner's own step may re-plan against the count).
    """
    planner = pruner.planner
    units, scores = planner.score(planner.units(), pruner.importance)
    model = planner.cost_model(units)
    floors = [planner.floor(u) for u in units]
    groups = planner_groups(model, units, scores, floors, planner.rounding, planner.floor)
    plan = plan_removal(
        groups, dim_sizes=model.dim_sizes, terms=model.terms, target_cost=pruner.target_cost(1)
    )
    for removal in pruner.plan(1).removals:
        pruner.DG.get_pruning_group(removal.module, removal.handler, list(removal.idxs)).prune()
    macs, params = tp.utils.count_ops_and_params(pruner.model, pruner.example_inputs)
    counts = pruner.initial_counts
    initial = counts.macs if pruner.metric == "macs" else counts.params
    return plan.cost, float(macs if pruner.metric == "macs" else params), float(initial)


@pytest.mark.parametrize("seed", range(0, 60, 2))
def test_cost_model_predicts_the_count_exactly(seed: int) -> None:
    case = random_case(seed)
    try:
        pruner = CPMCPruner(
            case.model, case.example_inputs, ignored_layers=[case.head], **case.budget
        )
    except ValueError:
        return  # refused before planning: nothing to predict
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial, (case.model.description, predicted, counted)


# ------------------------------------------------------------------ causes, one by one
class ConcatIntoFlatten(nn.Module):
    """Two convs concatenated, pooled to 2x2 and flattened into a Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)
        self.head = nn.Linear(5 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.head(F.adaptive_avg_pool2d(y, 2).flatten(1))


def test_concat_flattened_into_linear_maps_each_segment() -> None:
    from cpmc_plugin.torch_pruning.graph.concat import repair_concat_mappings

    torch.manual_seed(0)
    model, x = ConcatIntoFlatten(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, x)
    assert repair_concat_mappings(graph) == 1
    assert repair_concat_mappings(graph) == 0  # idempotent
    group = graph.get_pruning_group(model.b, tp.prune_conv_out_channels, [0])
    layers = {item.dep.target.module: list(item.idxs) for item in group}
    # b's channel 0 is channel 3 of the concat: flattened features 3 * 4 .. 3 * 4 + 3
    assert sorted(layers[model.head]) == [12, 13, 14, 15]
    assert model.a not in layers  # the host's unmapped concat coupled a's channel 0 too
    group.prune()
    # the next group is mapped through the concat at its new sizes (b has 1 channel)
    group = graph.get_pruning_group(model.a, tp.prune_conv_out_channels, [2])
    assert sorted({item.dep.target.module: list(item.idxs) for item in group}[model.head]) == [
        8,
        9,
        10,
        11,
    ]
    group.prune()
    assert model(x).shape == (1, 4)
    assert model.head.in_features == 3 * 4


def test_concat_flattened_into_linear_prunes_to_budget() -> None:
    torch.manual_seed(0)
    model, x = ConcatIntoFlatten(), torch.randn(1, 3, 8, 8)
    pruner = CPMCPruner(model, x, params_reduction=0.3, ignored_layers=[model.head])
    pruner.step()
    assert model(x).shape == (1, 4)
    assert model.head.in_features == 4 * (model.a.out_channels + model.b.out_channels)


class GatedBranches(nn.Module):
    """A narrow and a wide branch, concatenated and gated by one squeeze-excitation conv."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Conv2d(3, 2, 3, padding=1)
        self.wide = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(3, 10, 1)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.narrow(x)), F.relu(self.wide(x))], 1)
        y = y * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(x, 1)))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_each_segment_of_a_gated_concat_keeps_its_floor() -> None:
    """One group holds the gate and both branches: each branch keeps its own floor."""
    torch.manual_seed(0)
    model, x = GatedBranches(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model.narrow.weight.mul_(1e-3)  # the narrow branch scores lowest: it goes first
    pruner = CPMCPruner(
        model, x, flops_reduction=0.35, ignored_layers=[model.head], max_pruning_ratio=0.5
    )
    pruner.step()
    # floors by hand: ceil(2 * 0.5) = 1, ceil(8 * 0.5) = 4, ceil(10 * 0.5) = 5
    assert model.narrow.out_channels >= 1
    assert model.wide.out_channels >= 4
    assert model.gate.out_channels >= 5
    assert model(x).shape == (1, 3)


def test_protected_units_are_never_removed() -> None:
    # unit 0 scores lowest but is protected: the two cheapest others go instead
    group = ChannelGroup(
        scores=torch.tensor([0.1, 0.2, 0.9, 0.3]),
        removable=3,
        owned={0: torch.ones(4, dtype=torch.long)},
        protected=torch.tensor([True, False, False, False]),
    )
    plan = plan_removal([group], dim_sizes=[4], terms=[CostTerm(8.0, (0,))], target_cost=4.0)
    assert sorted(plan.removed[0].tolist()) == [1, 3]
    assert plan.cost == 4.0
    assert group.cap == 3
    everything = plan_removal([group], dim_sizes=[4], terms=[CostTerm(8.0, (0,))], target_cost=2.0)
    assert sorted(everything.removed[0].tolist()) == [1, 2, 3]  # 0 stays even at the floor


class ConcatIntoGroupedConv(nn.Module):
    """A grouped conv (2 groups of 2 inputs) reading the concat of a 3- and a 1-channel conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 1, 3, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1))
        return self.head(F.relu(y)).mean((2, 3))


def test_grouped_conv_reading_a_concat_is_left_whole() -> None:
    from cpmc_plugin.torch_pruning.graph.coupling import misaligned_grouped_conv

    torch.manual_seed(0)
    model, x = ConcatIntoGroupedConv(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, x)
    group = graph.get_pruning_group(model.a, tp.prune_conv_out_channels, [0, 1, 2])
    # a's channel 0 is input 0 of conv group 0; its partner, input 2, is a's channel 2:
    # removing channel 0 alone cannot keep both conv groups the same width
    assert misaligned_grouped_conv(group, 1, 3) is model.grouped
    own = graph.get_pruning_group(model.grouped, tp.prune_conv_out_channels, [0, 1, 2, 3])
    assert misaligned_grouped_conv(own, 2, 2) is None  # its outputs, two per conv group
    state = model_state(model)
    with pytest.raises(ValueError, match="grouped conv grouped"):
        CPMCPruner(model, x, flops_reduction=0.6, ignored_layers=[model.head]).step()
    assert_unchanged(model, state)
    pruner = CPMCPruner(model, x, flops_reduction=0.05, ignored_layers=[model.head])
    pruner.step()
    assert (model.a.out_channels, model.b.out_channels) == (3, 1)
    assert model(x).shape == (1, 2)


class SplitIntoReusedConv(nn.Module):
    """``torch.split`` into three pieces; the first two go through the same conv.

    The three results are the outputs, in the order of the pieces (torch-pruning maps a
    split's pieces to its consumers in the order it finds them, so they must match).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.shared = nn.Conv2d(4, 6, 1)
        self.other = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = self.shared.in_channels
        x1, x2, x3 = torch.split(self.stem(x), [s, s, self.other.in_channels], 1)
        return self.shared(x1), self.shared(x2), self.other(x3)


def test_split_into_a_reused_conv_couples_the_two_pieces() -> None:
    from cpmc_plugin.torch_pruning.graph.coupling import hidden_coupling

    torch.manual_seed(0)
    model, x = SplitIntoReusedConv(), torch.randn(1, 3, 6, 6)
    graph = tp.DependencyGraph().build_dependency(model, x)
    group = graph.get_pruning_group(model.stem, tp.prune_conv_out_channels, list(range(16)))
    labels = hidden_coupling(graph, group, reused={model.shared})
    assert labels is not None
    # stem channel j (first piece) and j + 4 (second piece) are input j of `shared`
    assert labels[:8].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert labels[8:].tolist() == list(range(8, 16))
    assert hidden_coupling(graph, group, reused=set()) is not None  # the split alone suffices
    plain = graph.get_pruning_group(model.other, tp.prune_conv_out_channels, list(range(6)))
    assert hidden_coupling(graph, plain, reused={model.shared}) is None


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_split_into_a_reused_conv_is_modelled_exactly(metric: str) -> None:
    torch.manual_seed(0)
    model, x = SplitIntoReusedConv(), torch.randn(1, 3, 6, 6)
    budget = {"flops_reduction" if metric == "macs" else "params_reduction": 0.5}
    pruner = CPMCPruner(model, x, ignored_layers=[model.shared, model.other], **budget)
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial, (predicted, counted)
    assert model.shared.in_channels * 2 + model.other.in_channels == model.stem.out_channels
    assert [tuple(y.shape) for y in model(x)] == [(1, 6, 6, 6)] * 3


class ScaledLinear(nn.Module):
    """A custom layer: normalise, scale and shift per channel, then an inner Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)
        self.shift = nn.Parameter(torch.randn(dim) * 0.1)
        self.inner = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / x.norm(dim=1, keepdim=True)
        return self.inner(x * self.scale + self.shift)


class ScaledLinearPruner(tp.pruner.BasePruningFunc):
    """Removes the same channels from the scale, the shift and both sides of the Linear."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.dim)) - set(idxs))
        layer.dim = len(keep)
        layer.scale = self._prune_parameter_and_grad(layer.scale, keep, 0)
        layer.shift = self._prune_parameter_and_grad(layer.shift, keep, 0)
        tp.prune_linear_in_channels(layer.inner, list(idxs))
        tp.prune_linear_out_channels(layer.inner, list(idxs))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.dim)

    get_in_channels = get_out_channels


def _mlp_with_custom_layer() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), ScaledLinear(16), nn.Linear(16, 3))
    return model, torch.randn(1, 12)


def _terms_of(pruner: CPMCPruner, module: nn.Module) -> dict[tuple[str, ...], float]:
    model = pruner.planner.cost_model(pruner.planner.units())
    dim = model.dim_index[(id(module), "out")]
    named = {(): "1", (dim,): "k", (dim, dim): "k^2"}
    found: dict[tuple[str, ...], float] = {}
    for term in model.terms:
        if term.dims and all(d == dim for d in term.dims):
            key = (named[term.dims],)
            found[key] = found.get(key, 0.0) + term.cost
    return found


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_customized_layer_cost_is_measured(metric: str) -> None:
    model, x = _mlp_with_custom_layer()
    custom = model[2]
    budget = {"flops_reduction" if metric == "macs" else "params_reduction": 0.5}
    pruner = CPMCPruner(
        model,
        x,
        ignored_layers=[model[3]],
        customized_pruners={ScaledLinear: ScaledLinearPruner()},
        **budget,
    )
    terms = _terms_of(pruner, custom)
    d = 16
    # by hand: the inner Linear's weight goes with k^2; its bias (once per call, in MACs)
    # and, for parameters, the scale and shift go with k
    assert terms[("k^2",)] == pytest.approx(d * d)
    assert terms[("k",)] == pytest.approx(d if metric == "macs" else 3 * d)
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial, (predicted, counted)


class TinyAttention(nn.Module):
    """Tokens embedded by a Linear layer, one self-attention block, a mean-pooled head."""

    def __init__(self, features: int = 6, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = self.norm(h + self.attention(h, h, h, need_weights=False)[0])
        return self.head(h.mean(1))


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_multihead_attention_cost_is_measured(metric: str) -> None:
    torch.manual_seed(0)
    model, x = TinyAttention(), torch.randn(1, 5, 6)
    budget = {"flops_reduction" if metric == "macs" else "params_reduction": 0.4}
    pruner = CPMCPruner(
        model,
        x,
        ignored_layers=[model.head],
        out_channel_groups={model.attention: model.attention.num_heads},
        **budget,
    )
    terms = _terms_of(pruner, model.attention)
    length, dim, heads = 5, 8, 2
    if metric == "macs":
        # the host counter's formula, with the width E scaled by k and the heads kept:
        # q, k, v and output projections 4 L E^2; scaling, biases and the two attention
        # products L E + 3 L E + L E + 2 L^2 E; the softmax H L^2 stays
        assert terms[("k^2",)] == pytest.approx(4 * length * dim * dim)
        assert terms[("k",)] == pytest.approx(5 * length * dim + 2 * length * length * dim)
        assert heads == model.attention.num_heads  # the H L^2 term is a constant
    else:
        # in_proj (3E x E) and out_proj (E x E) weights; in_proj and out_proj biases
        assert terms[("k^2",)] == pytest.approx(4 * dim * dim)
        assert terms[("k",)] == pytest.approx(4 * dim)
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial, (predicted, counted)


class Unbatched(nn.Module):
    """Runs its first layer on any input, then needs a batch dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.second(h / h.norm(dim=1, keepdim=True))


def test_calls_of_a_forward_that_raised_are_not_recorded() -> None:
    from cpmc_plugin.core.probe import record_calls

    model = Unbatched()
    with record_calls(model) as calls:
        # the host's tracer tries model(*x) first: on a batch of one, that runs `first`
        # on the unbatched sample and fails in the norm, then it runs model(x)
        tp.DependencyGraph().build_dependency(model, torch.randn(1, 4))
    assert [c.module for c in calls] == [model.first, model.second]


def test_linear_bias_macs_are_counted_once_per_call() -> None:
    """The counter counts a Linear bias once per call, not per token: the model follows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    x = torch.randn(1, 7, 6)  # 7 tokens
    pruner = CPMCPruner(model, x, flops_reduction=0.4, ignored_layers=[model[2]])
    cost_model = pruner.planner.cost_model(pruner.planner.units())
    out_dim = cost_model.dim_index[(id(model[0]), "out")]
    in_dim = cost_model.dim_index[(id(model[0]), "in")]
    weight = sum(t.cost for t in cost_model.terms if t.dims == (out_dim, in_dim))
    linear = sum(t.cost for t in cost_model.terms if t.dims == (out_dim,))
    assert weight == pytest.approx(7 * 6 * 10)  # tokens x in x out
    assert linear == pytest.approx(10 + 7 * 10)  # the bias once, the ReLU per element
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial


class GatedHalves(nn.Module):
    """A gated unit: one conv's two halves, multiplied (``a * sigmoid(b)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = nn.Conv2d(3, 16, 3, padding=1)
        self.after = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.pair(x).chunk(2, 1)
        return self.head(self.after(value * torch.sigmoid(gate)).mean((2, 3)))


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_gated_halves_of_one_conv_go_together(metric: str) -> None:
    from cpmc_plugin.torch_pruning.graph.coupling import hidden_coupling

    torch.manual_seed(0)
    model, x = GatedHalves(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, x)
    group = graph.get_pruning_group(model.pair, tp.prune_conv_out_channels, list(range(16)))
    labels = hidden_coupling(graph, group, reused=set())
    assert labels is not None and labels.tolist() == list(range(8)) * 2  # j goes with j + 8
    budget = {"flops_reduction" if metric == "macs" else "params_reduction": 0.4}
    pruner = CPMCPruner(model, x, ignored_layers=[model.head], **budget)
    predicted, counted, initial = _predicted_and_counted(pruner)
    assert abs(predicted - counted) <= 1e-6 * initial, (predicted, counted)
    assert model.pair.out_channels == 2 * model.after.in_channels


def test_attention_width_stays_a_multiple_of_its_heads() -> None:
    """Without head options, the embedding still goes in whole multiples of the heads."""
    torch.manual_seed(0)
    model, x = TinyAttention(dim=12, heads=4), torch.randn(1, 5, 6)
    pruner = CPMCPruner(model, x, flops_reduction=0.3, ignored_layers=[model.head])
    pruner.step()
    assert model.attention.embed_dim in (4, 8)  # 12 channels, 4 heads: 8 or 4 are left
    assert model(x).shape == (1, 3)
    check_tolerance = budget_tolerance(pruner)
    assert abs(pruner.report().macs_reduction - 0.3) <= check_tolerance
