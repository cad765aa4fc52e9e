"""cpmc_plugin.nni: NNI-format masks, global ranking, coupled channels, speedup, registry."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cpmc_plugin import CPMCImportance

from .archs import ARCHS, build

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


def masked_copy(model: nn.Module, masks) -> nn.Module:
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                if mask is not None:
                    getattr(twin.get_submodule(name), target).mul_(mask)
    return twin


def group_masked_copy(model: nn.Module, masks, x: torch.Tensor) -> nn.Module:
    """The model with each fully masked channel zeroed in every layer that owns it.

    That is what removing the channel computes: its norm layer (a BN after the conv,
    or the pre-activation BN of a DenseNet consumer) emits zero instead of its shift.
    """
    twin = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(twin, x)
    with torch.no_grad():
        for name, targets in masks.items():
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
    assert set(masks) == set(convs)
    for name, conv in convs.items():
        assert masks[name]["weight"].shape == conv.weight.shape
        assert masks[name].get("bias") is None  # torchvision's convs have no bias
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
    masks = compress(net, config, x=X32)
    ratios = {n: 1 - float(kept(m["weight"]).float().mean()) for n, m in masks.items()}
    total = sum(m["weight"].shape[0] for m in masks.values())
    removed = sum(int((~kept(m["weight"])).sum()) for m in masks.values())
    assert removed == total // 2  # floor(0.5 * 192) = 96 channels
    assert max(ratios.values()) <= 0.6 + 1e-9
    assert len({round(r, 3) for r in ratios.values()}) > 1  # global ranking, not uniform


def test_local_ratio_and_caps_on_resnet18() -> None:
    model = resnet18()
    masks = compress(model, GLOBAL)
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
    importance.prepare(graph, groups)
    group = next(g for g in groups if g[0].dep.target.module is model.layer3[0].conv1)
    torch.testing.assert_close(metrics["layer3.0.conv1"]["weight"], importance(group))


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
    if arch == "resnet18":
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
def _snapshot(model: nn.Module):
    return [type(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, snapshot) -> bool:
    types, state = snapshot
    now = model.state_dict()
    return [type(m) for m in model.modules()] == types and all(
        torch.equal(now[k], v) for k, v in state.items()
    )


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
            r"sparse_ratio must be a number in \[0, 1\)",
        ),
        ([{"op_types": ["Conv2d"], "sparse_ratio": -0.1}], {}, r"sparse_ratio must be a number"),
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
    ],
)
def test_bad_config_is_refused_and_the_model_untouched(config, options, match) -> None:
    model = resnet18()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        CPMCPruner(model, config, example_inputs=X64, **options)
    assert _same(model, snapshot)


def test_masks_that_do_not_fit_are_refused() -> None:
    model = resnet18()
    snapshot = _snapshot(model)
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
        assert _same(model, snapshot)


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
