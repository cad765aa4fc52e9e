"""calibrate_importance(finetune_steps=...): the best plans re-scored after a few SGD steps.

The short fine-tune is checked against the same steps taken by hand on a pruned copy
(equivalence), the choice against the candidates' scores, and the model, its mode,
its tensors and their gradients against what they were before.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from cpmc_plugin import CPMCImportance, CPMCPruner, calibrate_importance
from cpmc_plugin.core.batchnorm import recalibrate_bn
from cpmc_plugin.core.proxy import finetune_briefly, proxy_score
from cpmc_plugin.models import resnet20
from cpmc_plugin.torch_pruning.calibration.grid import DEFAULT_CANDIDATES
from cpmc_plugin.torch_pruning.oneshot import prune_to_budget
from tests.helpers import assert_unchanged, model_state

X = torch.randn(1, 3, 16, 16)
GRID = [
    {"alpha": 0, "beta": 0},
    {"alpha": 0, "beta": 0, "normalizer": "mean"},
    {"alpha": 0.5, "beta": 0.5},
    {"alpha": 0.0, "beta": 0.0, "normalizer": "max-min"},  # candidate 0 again
]


def net_and_data() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    net = resnet20(num_classes=3).eval()
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))) for _ in range(4)]
    return net, data


def calibrated(net: nn.Module, data, **kwargs) -> CPMCImportance:
    return calibrate_importance(
        net, X, data, flops_reduction=0.5, ignored_layers=[net.classifier], candidates=GRID,
        **kwargs,
    )  # fmt: skip


def test_the_fine_tuned_loss_equals_the_same_steps_taken_by_hand() -> None:
    net, data = net_and_data()
    imp = calibrated(net, data, finetune_steps=3, finetune_top=3, finetune_lr=0.05)
    report = imp.calibration
    tuned = [i for i, c in enumerate(report.candidates) if c.finetuned_loss is not None]
    assert len({report.candidates[i].loss for i in tuned}) >= 2  # distinct plans were tuned
    for i in tuned:
        by_hand = copy.deepcopy(net)
        options = report.candidates[i].options
        prune_to_budget(
            by_hand, X, CPMCImportance(X, **options), flops_reduction=0.5,
            ignored_layers=[by_hand.classifier],
        )  # fmt: skip
        recalibrate_bn(by_hand, data[:2], batches=2)
        assert proxy_score(by_hand, data[2:]).loss == pytest.approx(report.candidates[i].loss)
        finetune_briefly(by_hand, data[:2], steps=3, lr=0.05)
        after = proxy_score(by_hand, data[2:])
        assert report.candidates[i].finetuned_loss == pytest.approx(after.loss, rel=1e-5)
        assert report.candidates[i].finetuned_accuracy == after.accuracy


def test_the_lowest_loss_after_the_steps_wins_among_the_best_plans() -> None:
    net, data = net_and_data()
    first = calibrated(net, data).calibration
    report = calibrated(net, data, finetune_steps=2, finetune_top=2).calibration
    distinct = sorted(
        (i for i, c in enumerate(first.candidates) if c.same_plan_as is None),
        key=lambda i: (-first.candidates[i].accuracy, first.candidates[i].loss, i),
    )
    top = set(distinct[:2])  # the first pass's two best plans, and their copies
    copies = {i for i, c in enumerate(report.candidates) if c.same_plan_as in top}
    assert {i for i, c in enumerate(report.candidates) if c.finetuned_loss is not None} == (
        top | copies
    )
    assert report.candidates[3].same_plan_as == 0  # the same plan: evaluated once, shared
    assert report.candidates[3].finetuned_loss == report.candidates[0].finetuned_loss
    best = min(top, key=lambda i: (report.candidates[i].finetuned_loss, i))
    assert report.chosen == best
    assert report.options["finetune_steps"] == 2 and report.options["finetune_top"] == 2
    assert "loss after fine-tune" in report.table()


def test_one_fine_tuned_plan_keeps_the_first_pass_choice() -> None:
    net, data = net_and_data()
    first = calibrated(net, data).calibration
    report = calibrated(net, data, finetune_steps=2, finetune_top=1).calibration
    assert report.chosen == first.chosen
    assert report.best.finetuned_loss is not None


def test_the_model_its_mode_tensors_and_gradients_are_as_before() -> None:
    net, data = net_and_data()
    net.train()
    marker = torch.ones_like(net.classifier.weight)
    net.classifier.weight.grad = marker  # a gradient the caller had
    before = model_state(net)
    tensors = [id(t) for t in [*net.parameters(), *net.buffers()]]
    calibrated(net, data, finetune_steps=3, finetune_top=2, finetune_lr=0.5)
    assert_unchanged(net, before)
    assert [id(t) for t in [*net.parameters(), *net.buffers()]] == tensors
    assert net.classifier.weight.grad is marker
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("classifier"))
    assert net.training and net.layer1[0].conv1.out_channels == 16


def test_the_pruner_fine_tunes_its_calibration() -> None:
    net, data = net_and_data()
    pruner = CPMCPruner(
        net,
        X,
        flops_reduction=0.5,
        ignored_layers=[net.classifier],
        calibration_data=data,
        calibration_finetune_steps=2,
    )
    report = pruner.calibration
    assert report is not None and report.options["finetune_steps"] == 2
    assert report.best.finetuned_loss is not None
    assert (
        sum(c.finetuned_loss is not None and c.same_plan_as is None for c in report.candidates) == 8
    )  # the default finetune_top, out of the 41 candidates' distinct plans
    assert len(report.candidates) == len(DEFAULT_CANDIDATES)


def test_a_loss_without_gradient_is_refused_and_the_model_is_unchanged() -> None:
    net, data = net_and_data()
    before = model_state(net)

    def detached(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.detach(), targets)

    with pytest.raises(ValueError, match="calibration's fine-tune of candidate .* check loss_fn"):
        calibrated(net, data, finetune_steps=2, loss_fn=detached)
    assert_unchanged(net, before)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"finetune_steps": -1}, ValueError, "finetune_steps must be"),
        ({"finetune_steps": 2.0}, TypeError, "finetune_steps"),
        ({"finetune_steps": 2, "finetune_top": 0}, ValueError, "finetune_top must be"),
        ({"finetune_steps": 2, "finetune_lr": 0}, ValueError, "finetune_lr must be .* > 0"),
        ({"finetune_steps": 2, "finetune_lr": "0.1"}, TypeError, "finetune_lr"),
    ],
)
def test_bad_fine_tune_options_are_refused(kwargs, error, match) -> None:
    net, data = net_and_data()
    with pytest.raises(error, match=match):
        calibrated(net, data, **kwargs)


def test_a_model_without_batchnorm_has_no_batches_to_fine_tune_on() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 3))
    data = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(4)]
    with pytest.raises(ValueError, match="has no BatchNorm .* use finetune_steps=0"):
        calibrate_importance(
            net, X, data, ignored_layers=[net[-1]], candidates=GRID[:1], finetune_steps=2
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"calibration_finetune_steps": -2}, ValueError, "calibration_finetune_steps must be"),
        ({"calibration_finetune_steps": 4}, ValueError, "give calibration_data too"),
    ],
)
def test_bad_pruner_fine_tune_options_are_refused(kwargs, error, match) -> None:
    net, _ = net_and_data()
    with pytest.raises(error, match=match):
        CPMCPruner(net, X, ignored_layers=[net.classifier], **kwargs)
