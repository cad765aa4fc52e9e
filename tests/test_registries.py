"""Every entry of every registry, tested the day it is registered.

The parameters are collected from the registries themselves (models, criteria, presets,
data sets, sparse methods, NNI pruners), so a new entry gets these tests without a line
written for it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.core.presets import PRESETS, family_of
from cpmc_plugin.core.registry import Registry
from cpmc_plugin.criteria import CRITERIA, CRITERIA_REGISTRY, make_importance
from cpmc_plugin.data import DATASETS, load_dataset
from cpmc_plugin.data._load import _AUGMENT
from cpmc_plugin.models import MODELS, create_model
from cpmc_plugin.sparse import SparseRegularizer
from cpmc_plugin.sparse.factory import SPARSE, make_regularizer
from cpmc_plugin.torch_pruning.importance import CPMCImportance
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget

try:  # NNI is an extra: without it its registry is left out, with a skip below
    from cpmc_plugin.nni.registry import PRUNERS, build_pruner
except ImportError:  # pragma: no cover - depends on the install
    PRUNERS = None

REGISTRIES: dict[str, Registry[Any]] = {
    "model": MODELS,
    "criterion": CRITERIA_REGISTRY,
    "preset": PRESETS,
    "dataset": DATASETS,
    "sparse method": SPARSE,
}
if PRUNERS is not None:
    REGISTRIES["pruner"] = PRUNERS


def _net() -> nn.Sequential:
    """conv-BN-ReLU x2 and a linear head: every criterion has something to rank."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _inputs() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------- every registry
@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=list(REGISTRIES))
def test_registry_is_not_empty_and_names_are_unique(registry: Registry[Any]) -> None:
    names = registry.names()
    assert names and len(names) == len(set(names)) == len(registry)
    assert all(name in registry for name in names)


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=list(REGISTRIES))
def test_unknown_name_lists_the_known_ones(registry: Registry[Any]) -> None:
    with pytest.raises(ValueError, match=f"^unknown {registry.kind} 'no-such-entry'") as error:
        registry.get("no-such-entry")
    text = str(error.value)
    assert f"known {registry.plural}: " in text
    assert all(name in text for name in registry.names())


@pytest.mark.parametrize("registry", REGISTRIES.values(), ids=list(REGISTRIES))
def test_a_non_str_name_is_a_type_error(registry: Registry[Any]) -> None:
    with pytest.raises(TypeError, match=f"^{registry.kind} name must be a str, got int$"):
        registry.get(3)


# ---------------------------------------------------------------------- the public functions
def test_the_public_lookups_use_the_registries() -> None:
    from cpmc_plugin import get_preset, list_presets
    from cpmc_plugin.data import dataset_info, list_datasets
    from cpmc_plugin.models import list_models

    assert list_models() == sorted(MODELS.names())
    assert list_presets() == PRESETS.names() == ["vgg", "resnet", "densenet"]
    assert list_datasets() == DATASETS.names()
    assert tuple(CRITERIA_REGISTRY.names()) == CRITERIA and CRITERIA[0] == "cpmc"
    assert get_preset("vgg") is PRESETS.get("vgg")
    assert dataset_info("digits") is DATASETS.get("digits")
    with pytest.raises(ValueError, match="^unknown preset 'VGG'; known presets: vgg, resnet"):
        get_preset("VGG")  # presets and data sets match exact names
    with pytest.raises(ValueError, match="^unknown dataset 'Digits'; known datasets: digits"):
        dataset_info("Digits")
    with pytest.raises(ValueError, match=r"known models: .*\(or 'tv:<name>' for a torchvision"):
        create_model("resnet57")


# ---------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_runs_and_has_a_classifier(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 3
    assert type(model) is type(MODELS.get(name)(num_classes=3, in_channels=1))


# ---------------------------------------------------------------------- criteria
@pytest.mark.parametrize("name", CRITERIA_REGISTRY.names())
def test_every_criterion_prunes_a_tiny_net_to_budget(name: str) -> None:
    criterion = CRITERIA_REGISTRY.get(name)
    net, x = _net(), _inputs()
    data = [(x, torch.tensor([0, 1]))] if criterion.needs_data else None
    importance = make_importance(name, x, data=data)
    batch = (x, torch.tensor([0, 1])) if criterion.needs_gradients else None
    pruner = prune_to_budget(
        net,
        x,
        importance,
        flops_reduction=0.4,
        needs_gradients=criterion.needs_gradients,
        grad_batch=batch,
        ignored_layers=[net[8]],
    )
    report = pruner.report()
    assert 0.3 < report.macs_reduction < 0.5, report.macs_reduction
    assert net[0].out_channels < 8 or net[3].out_channels < 8
    assert net[8].out_features == 4 and net(x).shape == (2, 4)
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())


def test_a_gradient_criterion_without_a_batch_changes_nothing() -> None:
    (gradient,) = [n for n in CRITERIA_REGISTRY.names() if CRITERIA_REGISTRY.get(n).needs_gradients]
    net, x = _net(), _inputs()
    with pytest.raises(ValueError, match="pass grad_batch=\\(images, labels\\)"):
        prune_to_budget(
            net, x, make_importance(gradient, x), flops_reduction=0.4, needs_gradients=True
        )
    assert [m.out_channels for m in (net[0], net[3])] == [8, 8]


# ---------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_a_valid_set_of_cpmc_options(name: str) -> None:
    preset = PRESETS.get(name)
    assert preset.name == name and family_of(name) == name
    plain = CPMCImportance(_inputs(), alpha=preset.alpha, beta=preset.beta)
    named = CPMCImportance.preset(name, _inputs())
    assert (plain.alpha, plain.beta) == (named.alpha, named.beta) == (preset.alpha, preset.beta)
    assert preset.measured_on


# ---------------------------------------------------------------------- data sets
@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_consistent_info_and_a_loader_entry(name: str) -> None:
    info = DATASETS.get(name)
    assert info.name == name
    assert len(info.mean) == len(info.std) == info.in_channels
    assert min(info.num_classes, info.image_size, info.train_size, info.test_size) >= 1
    assert name in _AUGMENT  # the loader knows how to augment it


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_or_names_the_options_to_set(name: str, tmp_path: Path) -> None:
    spelled = {"root": "--ROOT-FLAG", "download": "--DOWNLOAD-FLAG"}
    if name == "digits":  # ships with scikit-learn: no files needed
        pytest.importorskip("sklearn")
        image, label = load_dataset(name, tmp_path, train=False, option_names=spelled)[0]
        info = DATASETS.get(name)
        assert image.shape == (info.in_channels, info.image_size, info.image_size)
        assert 0 <= label < info.num_classes
        return
    if name != "fashion-mnist":
        pytest.importorskip("torchvision")
    with pytest.raises(ValueError) as error:
        load_dataset(name, tmp_path, train=False, option_names=spelled)  # an empty folder
    assert "--ROOT-FLAG" in str(error.value) or "--DOWNLOAD-FLAG" in str(error.value)


# ---------------------------------------------------------------------- sparse methods
@pytest.mark.parametrize("name", SPARSE.names())
def test_every_sparse_method_builds_trains_and_prunes_zeros(name: str) -> None:
    method = SPARSE.get(name)
    net, x = _net(), _inputs()
    options = {"keep": 0.5} if method.strength_option == "keep" else {"strength": 1e-3}
    regularizer = make_regularizer(name, net, x, ignored_layers=[net[8]], **options)
    assert isinstance(regularizer, SparseRegularizer)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(net(x), torch.tensor([0, 1]))
    total = regularizer.add_penalty(loss)
    assert float(total.detach()) >= float(loss.detach()) and bool(torch.isfinite(total))
    total.backward()
    optimizer.step()
    regularizer.proximal_step(0.1)
    regularizer.finalize()
    removed = regularizer.prune_zeros(x)
    assert removed >= 0 and net(x).shape == (2, 4)


# ---------------------------------------------------------------------- NNI pruners
@pytest.mark.skipif(PRUNERS is None, reason="nni is not installed")
@pytest.mark.parametrize("name", PRUNERS.names() if PRUNERS is not None else [])
def test_every_pruner_builds(name: str) -> None:
    cls = PRUNERS.get(name)
    required = [
        p.name
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name not in {"model", "config_list", "example_inputs"}
    ]
    if required:  # a scheduled or training-aware pruner: an evaluator, a wrapped pruner...
        pytest.skip(f"{name} needs {', '.join(required)}; only its registration is checked")
    net, x = _net(), _inputs()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    kwargs: dict[str, Any] = {"example_inputs": x}
    if name == "CPMCPruner":
        kwargs["flops_reduction"] = 0.4
        config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.9}]
    pruner = build_pruner(name, net, config, **kwargs)
    assert isinstance(pruner, cls)
    _, masks = pruner.compress()
    assert masks and all(isinstance(k, str) for k in masks)
