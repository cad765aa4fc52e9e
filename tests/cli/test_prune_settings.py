"""cpmc-prune prune uses, prints and records the criterion's settings and the budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cpmc_plugin.cli import Checkpoint, main
from cpmc_plugin.cli.settings import CriterionSettings
from tests.cli.common import TINY

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_explicit_alpha_overrides_the_preset_and_is_printed(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.pt"
    argv = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--preset", "vgg"]
    assert main([*argv, "--alpha", "0.3", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert (
        "criterion cpmc: alpha=0.3 (--alpha, overrides the vgg preset's 0.1), "
        "beta=0.25 (the vgg preset)"
    ) in printed
    settings = Checkpoint.load(out).metrics["pruned"]["settings"]
    assert (settings["alpha"], settings["beta"], settings["given"]) == (0.3, 0.25, ["alpha"])
    importance = CriterionSettings.from_dict(settings).importance(None)
    assert (importance.alpha, importance.beta) == (0.3, 0.25)
    # the defaults, named as such
    assert CriterionSettings.resolve("cpmc").describe() == (
        "criterion cpmc: alpha=0.1 (CPMC's default 0.1), beta=0.5 (CPMC's default 0.5)"
    )


def test_prune_without_a_budget_says_it_uses_half_the_flops(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.pt"
    argv = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--criterion", "l1"]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "budget: 50 % fewer FLOPs (the default: set --flops-reduction" in printed
    pruned = Checkpoint.load(out).metrics["pruned"]
    assert pruned["budget"] == {"flops_reduction": 0.5}
    assert pruned["settings"]["label"] == "l1"
    argv = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--params-reduction", "0.3"]
    assert main([*argv, "--out", str(tmp_path / "q.pt"), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "budget: 30 % fewer parameters\n" in printed


def test_cpmc_auto_fine_tunes_its_calibration_when_asked(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.pt"
    argv = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--criterion", "cpmc-auto"]
    argv += ["--calibration-finetune-steps", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    assert "loss after fine-tune" in capsys.readouterr().out
    calibration = Checkpoint.load(out).metrics["pruned"]["calibration"]
    assert calibration["chosen"] is not None
    chosen = calibration["candidates"][calibration["chosen"]]
    assert chosen["finetuned_loss"] is not None
    tuned = [c for c in calibration["candidates"] if c["finetuned_loss"] is not None]
    assert len({c["same_plan_as"] for c in tuned if c["same_plan_as"] is None}) == 1
    assert sum(c["same_plan_as"] is None for c in tuned) == 8  # the 8 best distinct plans
    best = min(
        (i for i, c in enumerate(calibration["candidates"]) if c["finetuned_loss"] is not None),
        key=lambda i: (calibration["candidates"][i]["finetuned_loss"], i),
    )
    assert calibration["candidates"][best]["finetuned_loss"] == chosen["finetuned_loss"]


def test_the_data_aware_criterion_prunes_on_training_batches(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.pt"
    argv = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--criterion", "cpmc-data"]
    assert main([*argv, "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "gamma=1: the weight value weighted by activations" in printed
    reduction = re.search(
        r"pruned with cpmc-data \(default: .*gamma=1\): MACs -([0-9.]+)%", printed
    )
    assert reduction is not None and abs(float(reduction.group(1)) - 50) <= 1, printed
    assert Checkpoint.load(out).metrics["pruned"]["criterion"] == "cpmc-data"
