"""Every registered sparse method keeps the family's contract (``sparse.factory.SPARSE``).

The parametrization is read from the registry, so a method registered tomorrow is
tested here the day it is added; ``EXTRA`` shows it: an entry this file registers
(on a copy of the registry) runs through the same tests.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

from cpmc_plugin.core.registry import Registry
from cpmc_plugin.sparse import factory
from cpmc_plugin.sparse.bn_fista import BNFISTARegularizer
from cpmc_plugin.sparse.factory import SPARSE, SparseMethod, SparseOptions, make_regularizer
from cpmc_plugin.sparse.oicsr import OICSRRegularizer
from cpmc_plugin.sparse.protocol import SparseRegularizer

#: a method this file registers: OICSR without the sqrt(|g|) group weights
EXTRA = "oicsr-unweighted"

STRENGTH, RHO = 0.25, 0.5
#: per method: options for make_regularizer, and the weight add_penalty must use (by hand)
SETTINGS: dict[str, tuple[dict[str, Any], float]] = {
    "oicsr": ({"strength": STRENGTH}, STRENGTH),
    "bn-fista": ({"strength": STRENGTH}, STRENGTH),
    "ssr-l21": ({"strength": STRENGTH, "rho": RHO}, RHO),
    "ssr-l20": ({"keep": 2, "rho": RHO}, RHO),
    EXTRA: ({"strength": STRENGTH}, STRENGTH),
}
NAMES = [*SPARSE.names(), EXTRA]


def _unweighted(model: nn.Module, example_inputs: Any, o: SparseOptions) -> SparseRegularizer:
    return OICSRRegularizer(
        model,
        example_inputs,
        lam=o.lam,
        ignored_layers=o.ignored_layers,
        scale_by_group_size=False,
    )


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry[SparseMethod]:
    """``SPARSE`` plus ``EXTRA``, in place of the module's registry (restored afterwards)."""
    extended: Registry[SparseMethod] = Registry("sparse method")
    for name in SPARSE.names():
        extended.register(name, SPARSE.get(name))
    extended.register(EXTRA, SparseMethod(_unweighted, frozenset({"strength"})))
    monkeypatch.setattr(factory, "SPARSE", extended)
    return extended


def net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model


X = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def build(name: str, model: nn.Module) -> SparseRegularizer:
    options, _ = SETTINGS[name]
    return make_regularizer(name, model, X, ignored_layers=[model[8]], **options)


def test_the_parametrization_covers_the_registry(registry: Registry[SparseMethod]) -> None:
    assert registry.names() == NAMES
    assert set(SETTINGS) == set(NAMES), "a new sparse method needs a SETTINGS row"


@pytest.mark.parametrize("name", NAMES)
def test_is_a_sparse_regularizer(name: str) -> None:
    assert isinstance(build(name, net()), SparseRegularizer)


@pytest.mark.parametrize("name", NAMES)
def test_add_penalty_is_loss_plus_weighted_penalty(name: str) -> None:
    _, weight = SETTINGS[name]
    reg = build(name, net())
    loss = torch.tensor(1.5)
    penalty = reg.penalty().detach()
    assert float(penalty) > 0  # else a wrong weight would go unnoticed
    got = reg.add_penalty(loss, "inputs", "targets")  # NNI's patch_loss passes the batch
    assert torch.equal(got.detach(), loss + weight * penalty)


@pytest.mark.parametrize("name", NAMES)
def test_regularize_refuses_another_model(name: str) -> None:
    model = net()
    reg = build(name, model)
    model(X).square().mean().backward()
    with pytest.raises(ValueError, match=r"regularize\(\) got a different model than"):
        reg.regularize(net())
    reg.regularize(nn.DataParallel(model))  # the same model behind a wrapper is fine
    reg.regularize(model)


#: channels zeroed by hand: (conv index, output channels)
ZEROED = ((0, (1, 3)), (3, (0,)))


def zero_channels(model: nn.Sequential) -> None:
    """Zero every weight of the chosen channels: filters, biases, BN, consumer slices."""
    with torch.no_grad():
        for at, channels in ZEROED:
            conv, bn = model[at], model[at + 1]
            consumer = model[3] if at == 0 else model[8]
            for c in channels:
                conv.weight[c] = 0
                conv.bias[c] = 0
                bn.weight[c] = 0
                bn.bias[c] = 0
                consumer.weight[:, c] = 0


@pytest.mark.parametrize("name", NAMES)
def test_prune_zeros_removes_exactly_the_zeroed_channels(name: str) -> None:
    model = net()
    zero_channels(model)
    model.eval()
    conv0, conv1 = model[0].weight.detach().clone(), model[3].weight.detach().clone()
    with torch.no_grad():
        before = model(X)
    reg = build(name, model)
    assert reg.prune_zeros() == 3
    assert (model[0].out_channels, model[3].out_channels, model[8].in_features) == (2, 5, 5)
    assert torch.equal(model[0].weight, conv0[[0, 2]])  # the others are untouched
    assert torch.equal(model[3].weight, conv1[1:][:, [0, 2]])
    with torch.no_grad():
        after = model(X)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert reg.prune_zeros() == 0  # nothing zero is left
    reg.penalty()  # the regularizer follows the pruned model


@pytest.mark.parametrize("name", NAMES)
def test_prune_zeros_checks_tolerance(name: str) -> None:
    model = net()
    reg = build(name, model)
    with pytest.raises(ValueError, match=r"tolerance must be a finite number >= 0, got -1"):
        reg.prune_zeros(tolerance=-1)
    with pytest.raises(TypeError, match=r"tolerance must be a finite number >= 0, got '0'"):
        reg.prune_zeros(tolerance="0")  # type: ignore[arg-type]
    assert model[0].out_channels == 4


def test_bn_fista_takes_only_exact_zeros() -> None:
    reg = build("bn-fista", net())
    with pytest.raises(ValueError, match=r"prune_zero_channels removes only channels that are"):
        reg.prune_zeros(tolerance=0.1)


def test_bn_fista_without_example_inputs_needs_them_for_removal() -> None:
    model = net()
    reg = BNFISTARegularizer(model, lam=0.1, ignored_layers=[model[8]])
    with pytest.raises(ValueError, match=r"prune_zero_channels needs example_inputs"):
        reg.prune_zeros()
    zero_channels(model)
    assert reg.prune_zeros(X) == 3  # given here instead
