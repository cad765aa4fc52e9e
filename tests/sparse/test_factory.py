"""make_regularizer: the class behind every name, bad options, one training loop for all."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cpmc_plugin import (
    SPARSE_METHODS,
    BNFISTARegularizer,
    OICSRRegularizer,
    SparseRegularizer,
    SSRRegularizer,
    make_regularizer,
)
from tests.helpers import assert_unchanged, digits_bn_net, digits_split, model_state

sklearn_datasets = pytest.importorskip("sklearn.datasets")

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 1, 8, 8)


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = digits_split()
    return x[:1400], y[:1400]


# ---------------------------------------------------------------- the factory
def test_the_known_methods() -> None:
    assert SPARSE_METHODS == ("oicsr", "bn-fista", "ssr-l21", "ssr-l20")


@pytest.mark.parametrize(
    ("name", "options", "cls"),
    [
        ("oicsr", {}, OICSRRegularizer),
        ("bn-fista", {}, BNFISTARegularizer),
        ("ssr-l21", {}, SSRRegularizer),
        ("ssr-l20", {"keep": 0.5}, SSRRegularizer),
    ],
)
def test_each_name_gives_its_class(name: str, options: dict[str, Any], cls: type) -> None:
    net = digits_bn_net()
    reg = make_regularizer(name, net, X, ignored_layers=[net[-1]], **options)
    assert type(reg) is cls
    assert isinstance(reg, SparseRegularizer)
    assert reg.model is net  # type: ignore[attr-defined]


def test_defaults_and_options_reach_the_regularizer() -> None:
    net = digits_bn_net()
    oicsr = make_regularizer("oicsr", net, X)
    assert isinstance(oicsr, OICSRRegularizer) and oicsr.lam == 1e-4
    fista = make_regularizer("bn-fista", net, X, strength=0.3, ignored_layers=[net[1]])
    assert isinstance(fista, BNFISTARegularizer) and fista.lam == 0.3
    assert fista.norms == [net[4], net[8]]  # net[1] ignored
    l21 = make_regularizer("ssr-l21", net, X, strength=0.2, rho=0.5, update_every=3)
    assert isinstance(l21, SSRRegularizer)
    assert (l21.kind, l21.lam, l21.rho, l21.update_every) == ("l21", 0.2, 0.5, 3)
    l20 = make_regularizer("ssr-l20", net, X, keep=7, ignored_layers=[net[-1]])
    assert isinstance(l20, SSRRegularizer)
    assert (l20.kind, l20.keep, l20.rho) == ("l20", 7, 1e-3)  # rho defaults to 1e-3
    assert l20.num_groups == 16 + 32 + 32


def test_names_are_case_and_space_insensitive() -> None:
    net = digits_bn_net()
    assert isinstance(make_regularizer("  BN-FISTA ", net, X), BNFISTARegularizer)
    assert isinstance(make_regularizer("SSR-L20", net, X, keep=1), SSRRegularizer)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "lasso",
            {},
            r"unknown sparse method 'lasso'; "
            r"known sparse methods: oicsr, bn-fista, ssr-l21, ssr-l20",
        ),
        ("", {}, r"unknown sparse method ''"),
        ("ssr", {}, r"unknown sparse method 'ssr'"),
        ("oicsr", {"rho": 1.0}, r"rho, keep and update_every are SSR's options, not 'oicsr'"),
        ("oicsr", {"keep": 3}, r"rho, keep and update_every are SSR's options, not 'oicsr'"),
        ("oicsr", {"update_every": 2}, r"SSR's options, not 'oicsr'"),
        ("bn-fista", {"rho": 1.0}, r"SSR's options, not 'bn-fista'"),
        ("bn-fista", {"keep": 0.5}, r"SSR's options, not 'bn-fista'"),
        ("ssr-l20", {"keep": 2, "strength": 0.1}, r"ssr-l20 takes keep, not strength"),
        ("ssr-l20", {}, r"kind='l20' needs keep"),
        ("ssr-l21", {"keep": 2}, r"keep is for kind='l20'"),
        ("ssr-l21", {"rho": 0.0}, r"rho must be a finite number > 0"),
        ("oicsr", {"strength": -1.0}, r"lam must be a finite number >= 0, got -1.0"),
        ("bn-fista", {"strength": float("nan")}, r"lam must be a finite number >= 0, got nan"),
        ("ssr-l21", {"momentum": 0.5}, r"momentum is bn-fista's option, not 'ssr-l21'"),
        ("bn-fista", {"momentum": 1.5}, r"momentum must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_names_and_options(name: Any, options: dict[str, Any], message: str) -> None:
    net = digits_bn_net().train()
    before = model_state(net)
    with pytest.raises(ValueError, match=message):
        make_regularizer(name, net, X, **options)
    assert_unchanged(net, before)
    assert net.training


def test_a_name_that_is_not_a_str_is_a_type_error() -> None:
    net = digits_bn_net().train()
    with pytest.raises(TypeError, match=r"sparse method name must be a str, got int"):
        make_regularizer(3, net, X)  # type: ignore[arg-type]


# ---------------------------------------------------------------- one loop for all
STRENGTHS: dict[str, dict[str, Any]] = {
    "oicsr": {"strength": 0.04},  # measured: 48 of 80 groups at zero after 40 steps
    "bn-fista": {"strength": 0.2},  # measured: 47 channels with gamma = beta = 0
    "ssr-l21": {"strength": 0.05, "rho": 1.0},  # measured: 29 zero groups
    "ssr-l20": {"keep": 0.5, "rho": 1.0},  # 40 of 80 groups zero in Z from the start
}


def prune(name: str, reg: SparseRegularizer, x: torch.Tensor) -> int:
    """Remove the zero structure the way the method's own API does."""
    if name == "bn-fista":
        assert isinstance(reg, BNFISTARegularizer)
        with warnings.catch_warnings():
            # a zero-scale channel with a positive shift before a padded conv stays (warned)
            warnings.filterwarnings("ignore", r".* channels with zero BatchNorm scale were kept")
            return reg.prune_zero_channels(x)
    assert isinstance(reg, (OICSRRegularizer, SSRRegularizer))
    return reg.prune_zero_groups()


@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_one_training_loop_fits_every_method(
    name: str, digits: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = digits
    net = digits_bn_net()
    reg = make_regularizer(name, net, x[:2], ignored_layers=[net[-1]], **STRENGTHS[name])
    lr = 0.05
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    counts: list[int] = []
    for step in range(40):
        i = (step * 50) % len(x)
        optimizer.zero_grad()
        F.cross_entropy(net(x[i : i + 50]), y[i : i + 50]).backward()
        optimizer.step()
        counts.append(reg.proximal_step(lr))
    assert all(type(c) is int for c in counts)
    assert all(0 <= c <= 80 for c in counts)
    assert counts[-1] > 0
    reg.finalize()

    net.eval()
    params_before = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        before = net(x[:200])
    removed = prune(name, reg, x[:2])
    assert isinstance(removed, int)
    assert removed > 0
    if name.startswith("ssr"):
        assert removed == counts[-1]  # every group at zero in Z went
    assert sum(p.numel() for p in net.parameters()) < params_before
    with torch.no_grad():
        after = net(x[:200])
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
