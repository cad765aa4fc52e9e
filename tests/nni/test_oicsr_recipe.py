"""The NNI recipe: sparse-train through an NNI evaluator, prune with an NNI pruner, speed up."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cpmc_plugin import OICSRRegularizer

nni = pytest.importorskip("nni")
nni_compression = pytest.importorskip("nni.compression")
nni_pruning = pytest.importorskip("nni.compression.pruning")
nni_speedup = pytest.importorskip("nni.compression.speedup")

pytestmark = pytest.mark.usefixtures("one_thread")


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))


def training_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


def training_func(
    model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None
):
    optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
    model.train()
    for step in range(max_steps or 20):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        optimizer.zero_grad()
        training_step((X[batch], Y[batch]), model).backward()
        optimizer.step()


def sparse_train(model: nn.Module, reg: OICSRRegularizer | None, steps: int) -> None:
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.1)
    evaluator = nni_compression.TorchEvaluator(
        training_func, optimizer, training_step, dummy_input=X[:1]
    )
    evaluator._init_optimizer_helpers(model)  # what an NNI pruner does before binding
    evaluator.bind_model(model)
    if reg is not None:
        evaluator.patch_loss(reg.add_penalty)
    evaluator.train(max_steps=steps)
    evaluator.unbind_model()


def test_add_penalty_is_the_loss_plus_lam_times_the_penalty() -> None:
    model = net()
    reg = OICSRRegularizer(model, X[:1], lam=0.25, ignored_layers=[model[-1]])
    loss = torch.tensor(1.5)
    assert reg.add_penalty(loss, ("batch",)).item() == pytest.approx(
        1.5 + 0.25 * reg.penalty().item()
    )


def test_recipe_sparse_trains_through_nni_then_prunes_and_speeds_up() -> None:
    plain, sparse = net(), net()
    reg = OICSRRegularizer(sparse, X[:1], lam=0.05, ignored_layers=[sparse[-1]])
    sparse_train(plain, None, 20)
    sparse_train(sparse, reg, 20)
    plain_norms = OICSRRegularizer(plain, X[:1], ignored_layers=[plain[-1]]).group_norms()
    # the patched loss shrank the out-in groups well below plain training's
    assert reg.group_norms().sum() < 0.7 * plain_norms.sum()

    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]
    pruner = nni_pruning.L1NormPruner(sparse, config)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert masks["0"]["weight"].shape == sparse[0].weight.shape
    sparse.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.fx.symbolic_trace(sparse)
        nni_speedup.ModelSpeedup(sparse, X[:1], masks, graph_module=graph).speedup_model()
    assert sparse[0].out_channels == 8 and sparse[3].in_channels == 8
    assert sparse(X).shape == (64, 10)
