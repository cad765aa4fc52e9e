"""cpmc_plugin.nni: NNI-format masks, global ranking, coupled channels, speedup, registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance
from cpmc_plugin.torch_pruning.importance import RankingScope
from tests.archs import ARCHS, build
from tests.helpers import assert_unchanged, masked_copy, model_state

pytest.importorskip("nni")
torchvision = pytest.importorskip("torchvision")

from cpmc_plugin.nni import CPMCPruner, build_pruner, list_pruners, speedup  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def kept(mask: torch.Tensor) -> torch.Tensor:
    """Which output channels (rows) a weight mask keeps."""
    return mask.flatten(1).any(1)


def filters(masks):
    """The masks of conv/linear weights (CPMC's masks also cover the norm layers)."""
    return {n: m for n, m in masks.items() if m["weight"].dim() > 1}


def group_masked_copy(model: nn.Module, masks, x: torch.Tensor) -> nn.Module:
    """The model with each fully masked channel zeroed in every layer that owns it.

    That is what removing the channel computes: its norm layer (a BN after the conv,
    or the pre-activation BN of a DenseNet consumer) emits zero instead of its shift.
    """
    twin = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(twin, x)
    with torch.no_grad():
        for name, targets in filters(masks).items():
            layer = twin.get_submodule(name)
            dropped = torch.nonzero(~kept(targets["weight"])).flatten().tolist()
            if not dropped:
                continue
            group = graph.get_pruning_group(layer, tp.prune_conv_out_channels, dropped)
            for item in group:
                module = item.dep.target.module
                if not graph.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if isinstance(tensor, torch.Tensor):
                        tensor[item.idxs] = 0
    return twin


def compress(model, config, **options):
    pruner = CPMCPruner(model, config, example_inputs=options.pop("x", X64), **options)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    return masks


GLOBAL = [
    {"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": "g", "max_sparse_ratio": 0.8}
]


def test_masks_have_nni_shapes_and_coupled_channels_share_them() -> None:
    model = resnet18()
    masks = compress(model, GLOBAL)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(masks) == set(convs) | set(norms)
    for name, conv in convs.items():
        assert masks[name]["weight"].shape == conv.weight.shape
        assert masks[name].get("bias") is None  # torchvision's convs have no bias
    # the norm after each conv is masked exactly where the conv's filters are
    for conv_name, norm_name in (("conv1", "bn1"), ("layer3.0.conv1", "layer3.0.bn1")):
        rows = kept(masks[conv_name]["weight"]).float()
        assert torch.equal(masks[norm_name]["weight"], rows)
        assert torch.equal(masks[norm_name]["bias"], rows)
    assert torch.equal(
        masks["layer2.0.downsample.1"]["weight"],
        kept(masks["layer2.0.downsample.0"]["weight"]).float(),
    )
    # the residual adds tie these layers' output channels together
    for tied in (
        ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
        ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"],
        ["layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"],
    ):
        first = kept(masks[tied[0]]["weight"])
        assert not bool(first.all())
        for name in tied[1:]:
            assert torch.equal(kept(masks[name]["weight"]), first), name


def test_global_ratio_is_met_caps_hold_and_layers_differ() -> None:
    net = build(ARCHS[0])  # plain VGG-style convs: every channel is its own group
    config = [
        {"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 1, "max_sparse_ratio": 0.6}
    ]
    masks = filters(compress(net, config, x=X32))
    ratios = {n: 1 - float(kept(m["weight"]).float().mean()) for n, m in masks.items()}
    total = sum(m["weight"].shape[0] for m in masks.values())
    removed = sum(int((~kept(m["weight"])).sum()) for m in masks.values())
    assert removed == total // 2  # floor(0.5 * 192) = 96 channels
    assert max(ratios.values()) <= 0.6 + 1e-9
    assert len({round(r, 3) for r in ratios.values()}) > 1  # global ranking, not uniform


def test_local_ratio_and_caps_on_resnet18() -> None:
    model = resnet18()
    masks = filters(compress(model, GLOBAL))
    for name, target in masks.items():
        assert 1 - float(kept(target["weight"]).float().mean()) <= 0.8 + 1e-9, name
    local = compress(resnet18(), [{"op_names": ["layer1.0.conv1"], "sparse_ratio": 0.25}])
    assert int((~kept(local["layer1.0.conv1"]["weight"])).sum()) == 16


def test_scores_are_cpmc_importance() -> None:
    model = resnet18()
    pruner = CPMCPruner(model, GLOBAL, example_inputs=X64)
    metrics = pruner._calculate_metrics(pruner._collect_data())["channel_scores"]
    pruner.unwrap_model()
    graph = tp.DependencyGraph().build_dependency(model, X64)
    importance = CPMCImportance(X64)
    groups = list(graph.get_all_groups(ignored_layers=[model.fc]))
    importance.set_scope(graph, RankingScope(tuple(groups)))
    group = next(g for g in groups if g[0].dep.target.module is model.layer3[0].conv1)
    torch.testing.assert_close(metrics["layer3.0.conv1"]["weight"], importance(group))


def test_per_cost_scores_are_cpmc_importances_per_cost_scores() -> None:
    model = resnet18()
    pruner = CPMCPruner(model, GLOBAL, example_inputs=X64, combine="per-cost")
    metrics = pruner._calculate_metrics(pruner._collect_data())["channel_scores"]
    pruner.unwrap_model()
    graph = tp.DependencyGraph().build_dependency(model, X64)
    importance = CPMCImportance(X64, combine="per-cost")
    groups = list(graph.get_all_groups(ignored_layers=[model.fc]))
    importance.set_scope(graph, RankingScope(tuple(groups)))
    group = next(g for g in groups if g[0].dep.target.module is model.layer3[0].conv1)
    torch.testing.assert_close(metrics["layer3.0.conv1"]["weight"], importance(group))
    assert (pruner.importance.alpha, pruner.importance.beta) == (0.0, 0.0)


def test_dependency_group_id_gives_one_mask() -> None:
    net = build(ARCHS[0])
    names = ["features.0.0", "features.1.0"]  # both 32 output channels
    config = [{"op_names": names, "sparse_ratio": 0.5, "dependency_group_id": 7}]
    masks = compress(net, config, x=X32)
    first, second = (kept(masks[n]["weight"]) for n in names)
    assert torch.equal(first, second) and int((~first).sum()) == 16


@pytest.mark.parametrize("arch", ["resnet18", "densenet"])
def test_speedup_shrinks_and_equals_the_masked_model(arch: str) -> None:
    if arch == "resnet18":  # fresh BatchNorm (shift 0, mean 0): NNI's masked model exactly
        model, x = resnet18(), X64
    else:  # BN with non-trivial shift and statistics, concatenations
        model, x = build(ARCHS[3]), X32
    masks = compress(model, GLOBAL, x=x)
    nni_twin, removed_twin = masked_copy(model, masks), group_masked_copy(model, masks, x)
    with torch.no_grad():
        nni_masked, removed = nni_twin(x), removed_twin(x)
    params = sum(p.numel() for p in model.parameters())
    assert speedup(model, masks, x) is model
    assert sum(p.numel() for p in model.parameters()) < 0.75 * params
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, removed, rtol=1e-4, atol=1e-5)
    # the masks cover the norms too, so NNI's masked model is the removed one
    torch.testing.assert_close(out, nni_masked, rtol=1e-4, atol=1e-5)


def test_flops_budget_is_met_after_speedup() -> None:
    model = resnet18()
    before = tp.utils.count_ops_and_params(model, X64)[0]
    masks = compress(
        model, [{"op_types": ["Conv2d"], "max_sparse_ratio": 0.9}], flops_reduction=0.4
    )
    speedup(model, masks, X64)
    after = tp.utils.count_ops_and_params(model, X64)[0]
    assert abs((1 - after / before) - 0.4) < 0.005


def test_flops_mode_honours_max_sparse_ratio_per_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    config = [
        {"op_names": ["0"], "max_sparse_ratio": 0.0625},  # at most 1 of 16 filters
        {"op_names": ["2", "4"], "max_sparse_ratio": 0.9},
    ]
    masks = compress(model, config, x=X32, flops_reduction=0.5)
    assert int((~kept(masks["0"]["weight"])).sum()) <= 1
    assert int((~kept(masks["2"]["weight"])).sum()) > 1


def test_speedup_keeps_channels_tied_to_an_unmasked_layer() -> None:
    model = resnet18()
    mask = torch.ones_like(model.layer1[0].conv2.weight)
    mask[:8] = 0  # only one of the residual-tied layers: the channels must stay
    x = X64
    reference = masked_copy(model, {"layer1.0.conv2": {"weight": mask}})(x)
    speedup(model, {"layer1.0.conv2": {"weight": mask}}, x)
    assert model.layer1[0].conv2.out_channels == 64
    torch.testing.assert_close(model(x), reference)


def test_build_pruner_resolves_names() -> None:
    names = list_pruners()
    assert {"CPMCPruner", "L1NormPruner", "L2NormPruner", "FPGMPruner", "LevelPruner"} <= set(names)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}]
    for name in ("CPMCPruner", "cpmcpruner", "L1NormPruner", "FPGMPruner"):
        pruner = build_pruner(name, resnet18(), config, example_inputs=X64)
        assert type(pruner).__name__.lower() == name.lower()
        _, masks = pruner.compress()
        assert masks["conv1"]["weight"].shape == (64, 3, 7, 7)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("config", "options", "match"),
    [
        (
            [{"op_types": ["Conv2d"], "total_sparsity": 0.5}],
            {},
            r"unknown config key\(s\) total_sparsity",
        ),
        (
            [{"op_types": ["Conv2d"], "sparse_threshold": 0.1}],
            {},
            r"does not take sparse_threshold",
        ),
        (
            [{"op_names": ["no.such.layer"], "sparse_ratio": 0.5}],
            {},
            r"selects no layer named no.such.layer",
        ),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 1.0}],
            {},
            r"sparse_ratio must be in \[0, 1\), got 1.0",
        ),
        ([{"op_types": ["Conv2d"], "sparse_ratio": -0.1}], {}, r"sparse_ratio must be in \[0, 1\)"),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparse_ratio": 0}],
            {},
            r"max_sparse_ratio must be in \(0, 1\], got 0",
        ),
        ([{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], {}, r"Conv and Linear layers only"),
        ([{"op_types": ["Conv2d"]}], {}, r"needs sparse_ratio unless flops_reduction"),
        ([{"sparse_ratio": 0.5}], {}, r"needs one of op_types"),
        ([], {}, r"non-empty list"),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.9, "max_sparse_ratio": 0.5}],
            {},
            r"sparse_ratio cannot be met",
        ),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.25, "min_sparse_ratio": 0.5}],
            {},
            r"sparse_ratio cannot be met for .*min_sparse_ratio alone removes",
        ),
        (
            [
                {"op_names": ["layer1.0.conv1"], "sparse_ratio": 0.5, "global_group_id": 1},
                {"op_names": ["layer1.1.conv1"], "sparse_ratio": 0.3, "global_group_id": 1},
            ],
            {},
            r"need one sparse_ratio",
        ),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "dependency_group_id": 1}],
            {"flops_reduction": 0.5},
            r"dependency_group_id cannot be combined with flops_reduction",
        ),
        (
            [{"op_types": ["Conv2d"]}],
            {"flops_reduction": 1.5},
            r"flops_reduction must be in \(0, 1\)",
        ),
        ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], {"alpha": -1}, r"alpha must be"),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
            {"combine": "product"},
            r"combine must be one of 'additive', 'per-cost'",
        ),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}],
            {"combine": "per-cost", "beta": 0.5},
            r"leave alpha and beta at 0",
        ),
    ],
)
def test_bad_config_is_refused_and_the_model_untouched(config, options, match) -> None:
    model = resnet18()
    snapshot = model_state(model)
    with pytest.raises(ValueError, match=match):
        CPMCPruner(model, config, example_inputs=X64, **options)
    assert_unchanged(model, snapshot)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.5}, r"config_list must be a non-empty list"),
        ([["op_types", "Conv2d"]], r"every config_list entry must be a dict"),
        ([{"op_types": ["Conv2d"], "sparse_ratio": "0.5"}], r"sparse_ratio must be in \[0, 1\)"),
        ([{"op_types": ["Conv2d"], "sparse_ratio": True}], r"sparse_ratio must be in .*got True"),
        (
            [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "min_sparse_ratio": None}],
            r"min_sparse_ratio must be in \[0, 1\), got None",
        ),
    ],
)
def test_a_config_of_the_wrong_type_is_a_type_error(config, match) -> None:
    model = resnet18()
    snapshot = model_state(model)
    with pytest.raises(TypeError, match=match):
        CPMCPruner(model, config, example_inputs=X64)
    assert_unchanged(model, snapshot)


def test_masks_that_do_not_fit_are_refused() -> None:
    model = resnet18()
    snapshot = model_state(model)
    good = torch.ones(64, 3, 7, 7)
    cases = [
        ({"nope": {"weight": good}}, r"module the model does not have: 'nope'"),
        ({"conv1": {"weight": torch.ones(3, 3)}}, r"does not fit: shape \(3, 3\)"),
        ({"conv1": {"weight": good * 0.5}}, r"only 0 and 1"),
        ({"conv1": {"scale": good}}, r"not a tensor of the model"),
        ({}, r"non-empty"),
    ]
    for masks, match in cases:
        with pytest.raises(ValueError, match=match):
            speedup(model, masks, X64)
        assert_unchanged(model, snapshot)
    wrong_types = [
        ([("conv1", good)], r"masks must be a non-empty .* dict, got list"),
        ({"conv1": good}, r"masks\['conv1'\] must be a \{target_name: mask\} dict, got Tensor"),
        ({"conv1": {"weight": good.tolist()}}, r"mask of conv1.weight must be a tensor, got list"),
    ]
    for masks, match in wrong_types:
        with pytest.raises(TypeError, match=match):
            speedup(model, masks, X64)
        assert_unchanged(model, snapshot)


def test_speedup_undoes_everything_when_torch_pruning_fails(monkeypatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    snapshot = model_state(model)
    mask = torch.ones(8, 3, 3, 3)
    mask[:3] = 0

    def fail(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tp.dependency.Group, "prune", fail)
    with pytest.raises(
        ValueError,
        match=r"speedup was undone and the model left as it was: torch-pruning failed to "
        r"remove 3 channels of 0: RuntimeError: boom\. Exclude 0 from config_list",
    ):
        speedup(model, {"0": {"weight": mask}}, torch.randn(1, 3, 8, 8))
    assert_unchanged(model, snapshot)  # unmasked too


def test_speedup_refuses_a_wrapped_model() -> None:
    model = resnet18()
    pruner = CPMCPruner(model, GLOBAL, example_inputs=X64)
    _, masks = pruner.compress()
    with pytest.raises(ValueError, match=r"unwrap_model\(\) first"):
        speedup(model, masks, X64)


def test_build_pruner_refuses_unknown_names_and_misplaced_options() -> None:
    with pytest.raises(
        ValueError, match=r"unknown pruner 'SuperPruner'; known pruners: .*CPMCPruner"
    ):
        build_pruner("SuperPruner", resnet18(), GLOBAL)
    with pytest.raises(ValueError, match=r"flops_reduction is a CPMCPruner option"):
        build_pruner("L1NormPruner", resnet18(), GLOBAL, flops_reduction=0.5)


@pytest.fixture
def pruners(monkeypatch):
    """A private copy of the pruner registry, so that a test's registrations do not leak."""
    from cpmc_plugin.core.registry import Registry
    from cpmc_plugin.nni import registry

    fresh = Registry("pruner", sort=True)
    for name in registry.PRUNERS.names():
        fresh.register(name, registry.PRUNERS.get(name))
    monkeypatch.setattr(registry, "PRUNERS", fresh)
    return fresh


def test_register_pruner_adds_a_pruner_build_pruner_finds_by_any_case(pruners) -> None:
    from nni.compression.pruning import L1NormPruner

    from cpmc_plugin.nni import register_pruner

    class MyPruner(L1NormPruner):
        pass

    class Other(L1NormPruner):
        pass

    register_pruner("MyPruner", MyPruner)
    assert "MyPruner" in list_pruners() and list_pruners() == sorted(list_pruners())
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}]
    assert type(build_pruner("  mypruner ", resnet18(), config, example_inputs=X64)) is MyPruner
    with pytest.raises(ValueError, match=r"a pruner named 'MYPRUNER' is registered already"):
        register_pruner("MYPRUNER", Other)
    register_pruner("mypruner", Other, replace=True)  # one entry, under the new spelling
    assert [n for n in list_pruners() if n.lower() == "mypruner"] == ["mypruner"]
    assert type(build_pruner("MyPruner", resnet18(), config)) is Other


@pytest.mark.parametrize(
    ("name", "cls", "error", "match"),
    [
        ("Mine", nn.Conv2d, TypeError, r"cls must be a subclass of .*Pruner, got .*Conv2d"),
        ("Mine", "L1NormPruner", TypeError, r"cls must be a subclass of .*Pruner"),
        (3, None, TypeError, r"pruner name must be a str, got int"),
        ("", None, ValueError, r"a pruner name must be non-empty"),
    ],
)
def test_register_pruner_refuses_what_is_not_a_pruner(pruners, name, cls, error, match) -> None:
    from nni.compression.pruning import L1NormPruner

    from cpmc_plugin.nni import register_pruner

    before = list_pruners()
    with pytest.raises(error, match=match):
        register_pruner(name, L1NormPruner if cls is None else cls)
    assert list_pruners() == before
    with pytest.raises(TypeError, match=r"pruner name must be a str"):
        build_pruner(3, resnet18(), GLOBAL)


# ---------------------------------------------------------------------- NNI's own keys
def blocks_alike(mask: torch.Tensor, blocks: int) -> bool:
    rows = kept(mask).view(blocks, -1)
    return bool((rows == rows[0]).all())


def test_granularity_out_channel_is_what_cpmc_masks() -> None:
    plain = compress(build(ARCHS[0]), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], x=X32)
    for granularity in ("out_channel", "default"):
        config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": granularity}]
        masks = compress(build(ARCHS[0]), config, x=X32)
        assert masks.keys() == plain.keys()
        for name, targets in masks.items():
            for target, mask in targets.items():
                other = plain[name][target]
                same = mask is other is None or torch.equal(mask, other)
                assert same, (granularity, name, target)


@pytest.mark.parametrize("granularity", ["in_channel", "per_channel", [1, -1]])
def test_other_granularities_are_refused_and_the_model_untouched(granularity) -> None:
    model = build(ARCHS[0])
    snapshot = model_state(model)
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": granularity}]
    with pytest.raises(
        ValueError, match=r"granularity=.* is not what CPMCPruner does: it masks whole output"
    ):
        CPMCPruner(model, config, example_inputs=X32)
    assert_unchanged(model, snapshot)


def test_internal_metric_block_scores_the_blocks_together() -> None:
    """32 channels in 4 blocks of 8: a position's score is its mean over the 4 blocks, and
    the 4 lowest positions go from every block (16 channels, sparse_ratio 0.5)."""
    model = build(ARCHS[0])
    config = [{"op_names": ["features.0.0"], "sparse_ratio": 0.5, "internal_metric_block": 4}]
    pruner = CPMCPruner(model, config, example_inputs=X32)
    score = pruner._collect_data()["units"]["0"]
    lowest = torch.argsort(score.view(4, 8).mean(0), stable=True)[:4]
    expected = sorted((lowest[None, :] + 8 * torch.arange(4)[:, None]).flatten().tolist())
    _, masks = pruner.compress()
    pruner.unwrap_model()
    weight = masks["features.0.0"]["weight"]
    assert torch.nonzero(~kept(weight)).flatten().tolist() == expected
    assert blocks_alike(weight, 4)
    # the BN after the conv is masked at the same channels
    assert torch.equal(masks["features.0.1"]["weight"], kept(weight).float())


def test_internal_metric_block_under_a_flops_budget() -> None:
    model = build(ARCHS[0])
    before = tp.utils.count_ops_and_params(model, X32)[0]
    config = [{"op_types": ["Conv2d"], "internal_metric_block": 4}]
    masks = compress(model, config, x=X32, flops_reduction=0.4)
    assert sum(int((~kept(m["weight"])).sum()) for m in filters(masks).values()) > 0
    for name, target in filters(masks).items():
        assert blocks_alike(target["weight"], 4), name
    speedup(model, masks, X32)
    reduction = 1 - tp.utils.count_ops_and_params(model, X32)[0] / before
    assert abs(reduction - 0.4) < 0.02  # one position is 4 channels here


def test_the_config_nni_writes_for_a_grouped_conv_is_honoured() -> None:
    """``auto_set_denpendency_group_ids`` writes one entry per layer with a
    ``dependency_group_id`` and, around a grouped conv, ``internal_metric_block``."""
    from tests.nni.test_speedup_equals_masked import XG, grouped_net

    model = grouped_net(0)
    config = [
        {"op_names": [name], "sparse_ratio": 0.5, "dependency_group_id": uid, **extra}
        for name, uid, extra in (
            ("conv1", "a1", {"internal_metric_block": 4}),
            ("conv2", "b2", {"internal_metric_block": 4, "granularity": "out_channel"}),
        )
    ]
    masks = compress(model, config, x=XG)
    assert blocks_alike(masks["conv1"]["weight"], 4) and blocks_alike(masks["conv2"]["weight"], 4)
    reference = masked_copy(model, masks)
    speedup(model, masks, XG)
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.groups) == (4, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(XG), reference(XG), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        (3, ValueError, r"32 output channels do not split into 3 equal blocks"),
        (0, ValueError, r"internal_metric_block must be an integer >= 1, got 0"),
        (True, TypeError, r"internal_metric_block must be an integer >= 1, got True"),
        (2.0, TypeError, r"internal_metric_block must be an integer >= 1, got 2.0"),
    ],
)
def test_internal_metric_blocks_that_do_not_fit_are_refused(block, error, match) -> None:
    model = build(ARCHS[0])
    snapshot = model_state(model)
    config = [{"op_names": ["features.0.0"], "sparse_ratio": 0.5, "internal_metric_block": block}]
    with pytest.raises(error, match=match):
        CPMCPruner(model, config, example_inputs=X32)
    assert_unchanged(model, snapshot)


def test_a_global_pool_mixes_blocked_and_plain_layers() -> None:
    """32 + 32 channels at sparse_ratio 0.5: 32 go, from features.0.0 only in whole
    positions of its 4 blocks, and features.1.0 makes up the rest channel by channel."""
    config = [
        {
            "op_names": ["features.0.0"],
            "sparse_ratio": 0.5,
            "global_group_id": "g",
            "internal_metric_block": 4,
        },
        {"op_names": ["features.1.0"], "sparse_ratio": 0.5, "global_group_id": "g"},
    ]
    masks = compress(build(ARCHS[0]), config, x=X32)
    first = int((~kept(masks["features.0.0"]["weight"])).sum())
    second = int((~kept(masks["features.1.0"]["weight"])).sum())
    assert first + second == 32
    assert first % 4 == 0 and blocks_alike(masks["features.0.0"]["weight"], 4)


def test_data_aware_scores_are_cpmc_importances_data_aware_scores() -> None:
    """The NNI pruner passes the data-aware options to the same importance; the scores it
    masks by are that importance's, measured on the same batches."""
    torch.manual_seed(0)
    data = [(torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,)))]
    model = resnet18()
    pruner = CPMCPruner(model, GLOBAL, example_inputs=X64, data=data, gamma=1.0)
    metrics = pruner._calculate_metrics(pruner._collect_data())["channel_scores"]
    pruner.unwrap_model()
    graph = tp.DependencyGraph().build_dependency(model, X64)
    importance = CPMCImportance(X64, data=data, gamma=1.0)
    groups = list(graph.get_all_groups(ignored_layers=[model.fc]))
    importance.set_scope(graph, RankingScope(tuple(groups)))
    group = next(g for g in groups if g[0].dep.target.module is model.layer3[0].conv1)
    plain = CPMCImportance(X64)
    plain.set_scope(graph, RankingScope(tuple(groups)))
    torch.testing.assert_close(metrics["layer3.0.conv1"]["weight"], importance(group))
    assert not torch.allclose(importance(group), plain(group))  # the data changed the ranking
