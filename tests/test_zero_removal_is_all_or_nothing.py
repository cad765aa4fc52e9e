"""Every removal path outside CPMCPruner is all or nothing.

A model whose forward hard-codes a channel count (here in a ``reshape``) still traces
and prunes, but no longer runs afterwards. ``prune_zero_groups`` (OICSR, SSR),
``prune_zero_channels`` (BN-FISTA) and the NNI ``speedup`` must then put the model
back exactly as it was (every tensor's values, every module's shapes and attributes)
and raise a ``ValueError`` that names what failed and what to do.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import BNFISTARegularizer, OICSRRegularizer, SSRRegularizer
from tests.helpers import assert_unchanged, model_state

pytestmark = pytest.mark.usefixtures("one_thread")

DEAD = [0, 2, 5]  # channels zeroed by hand below: 5 of 8 stay, and 3 * 5 * 36 is not 288k


class HardCodedView(nn.Module):
    """conv -> BN -> ReLU -> reshape(-1, 8 * 6 * 6) -> fc: the 8 is hard-coded."""

    def __init__(self, hard_coded: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 4)
        self.hard_coded = hard_coded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x)))
        return self.fc(y.reshape(-1, 8 * 6 * 6) if self.hard_coded else y.flatten(1))


X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def net(hard_coded: bool = True) -> HardCodedView:
    torch.manual_seed(0)
    model = HardCodedView(hard_coded)
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.0)
        model.bn.bias.uniform_(0.1, 0.4)  # positive shifts: a zero-scale channel emits > 0
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def zero_filters(model: HardCodedView, *, consumers: bool) -> None:
    """Zero the channels DEAD: filter rows, bias, BN scale and shift (and fc's columns)."""
    with torch.no_grad():
        for c in DEAD:
            model.conv.weight[c] = 0
            model.conv.bias[c] = 0
            model.bn.weight[c] = 0
            model.bn.bias[c] = 0
            if consumers:
                model.fc.weight[:, c * 36 : (c + 1) * 36] = 0


def test_a_hard_coded_view_runs_only_at_its_width() -> None:
    """The premise: the model itself runs, and the same model without the hard-coded
    width prunes fine on every path (so the refusals below come from the view alone)."""
    model = net(hard_coded=True)
    assert model(X).shape == (3, 4)
    free = net(hard_coded=False)
    zero_filters(free, consumers=True)
    reg = OICSRRegularizer(free, X, lam=0.1, ignored_layers=[free.fc])
    assert reg.prune_zero_groups() == len(DEAD)
    assert free.conv.out_channels == 5 and free(X).shape == (3, 4)


def test_oicsr_prune_zero_groups_is_refused_and_undone() -> None:
    model = net()
    zero_filters(model, consumers=True)
    reg = OICSRRegularizer(model, X, lam=0.1, ignored_layers=[model.fc])
    groups = reg.num_groups
    before = model_state(model)
    with pytest.raises(
        ValueError,
        match=r"OICSRRegularizer\.prune_zero_groups was undone and the model left as it was: "
        r"after removing channels \(conv \(8, 3, 3, 3\) -> \(5, 3, 3, 3\).*outside any "
        r"submodule.*shape '\[-1, 288\]' is invalid.*ignored_layers",
    ):
        reg.prune_zero_groups()
    assert_unchanged(model, before)
    assert model(X).shape == (3, 4)
    assert reg.num_groups == groups  # the regularizer still describes the model


def test_ssr_prune_zero_groups_is_refused_and_undone() -> None:
    model = net()
    zero_filters(model, consumers=False)
    reg = SSRRegularizer(model, X, rho=1e-2, ignored_layers=[model.fc])
    before = model_state(model)
    with pytest.raises(
        ValueError,
        match=r"SSRRegularizer\.prune_zero_groups was undone.*conv \(8, 3, 3, 3\) -> "
        r"\(5, 3, 3, 3\).*is invalid for input of size.*ignored_layers",
    ):
        reg.prune_zero_groups()
    assert_unchanged(model, before)
    assert reg.num_groups == 8


def test_bn_fista_prune_zero_channels_is_refused_and_the_fold_undone() -> None:
    """BN-FISTA folds the zero-scale channels' constants into fc's bias in place before it
    removes them: the refusal must put the old bias values back too."""
    model = net()
    with torch.no_grad():
        model.bn.weight[DEAD] = 0  # the shifts stay > 0: the channels emit constants
    reg = BNFISTARegularizer(model, lam=0.1, ignored_layers=[model.fc])
    before = model_state(model)
    with pytest.raises(
        ValueError,
        match=r"BNFISTARegularizer\.prune_zero_channels was undone.*conv \(8, 3, 3, 3\) -> "
        r"\(5, 3, 3, 3\).*fc \(4, 288\) -> \(4, 180\).*ignored_layers",
    ):
        reg.prune_zero_channels(X)
    assert_unchanged(model, before)
    assert reg.num_zero_channels == len(DEAD)


def test_bn_fista_refusal_restores_the_regularizers_iterates() -> None:
    """``prune_zero_channels`` first loads FISTA's sparse iterate into the model; a refused
    call leaves both the extrapolated weights and the iterate as they were."""
    model = net()
    reg = BNFISTARegularizer(model, lam=0.1, ignored_layers=[model.fc])
    with torch.no_grad():
        model.bn.weight[DEAD] = 0.01  # below lr * lam: soft-thresholded to exactly 0
    reg.proximal_step(lr=1.0)
    before = model_state(model)
    sparse = {k: v.clone() for k, v in reg._sparse.items()}
    with pytest.raises(ValueError, match=r"prune_zero_channels was undone"):
        reg.prune_zero_channels(X)
    assert_unchanged(model, before)
    assert sparse.keys() == reg._sparse.keys()
    assert all(torch.equal(reg._sparse[k], v) for k, v in sparse.items())


def test_nni_speedup_is_refused_and_undone() -> None:
    pytest.importorskip("nni")
    from cpmc_plugin.nni import CPMCPruner, speedup

    logging.getLogger("nni").setLevel(logging.ERROR)
    model = net()
    pruner = CPMCPruner(model, [{"op_names": ["conv"], "sparse_ratio": 0.375}], example_inputs=X)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert int((~masks["conv"]["weight"].flatten(1).any(1)).sum()) == 3
    before = model_state(model)
    with pytest.raises(
        ValueError,
        match=r"speedup was undone and the model left as it was: after removing channels "
        r"\(conv \(8, 3, 3, 3\) -> \(5, 3, 3, 3\).*is invalid.*exclude_op_names",
    ):
        speedup(model, masks, X)
    assert_unchanged(model, before)  # the masks were taken back out of the weights too
