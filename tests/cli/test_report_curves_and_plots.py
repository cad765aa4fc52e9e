"""cpmc-prune report: each curve is pruned with the settings it is named after, and the
plots say what was pruned, how and on what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cpmc_plugin.cli.commands as cli_main
from cpmc_plugin.cli import Checkpoint, build_parser, main
from cpmc_plugin.cli.report import channels_figure, curve_figure
from cpmc_plugin.cli.settings import CriterionSettings
from tests.cli.common import TINY

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_curve_uses_the_settings_of_the_prune_step(demo_dir: Path) -> None:
    report = json.loads((demo_dir / "report" / "report.json").read_text())
    assert report["dataset"] == "digits" and report["model"] == "resnet20"
    prune = report["prune"]
    assert (prune["criterion"], prune["preset"], prune["alpha"], prune["beta"]) == (
        "cpmc-auto",
        None,
        None,
        None,
    )
    assert prune["label"] == "cpmc-auto (calibrated at each budget)"
    assert prune["budget"] == {"flops_reduction": 0.5}
    chosen = report["metrics"]["pruned"]["calibration"]
    assert chosen["candidates"][chosen["chosen"]]["options"] == chosen["chosen_options"]
    assert "seconds" not in chosen  # wall time would make the checkpoint irreproducible
    curve = report["prune_rate_curve"]
    # 100 training images in batches of 64: two batches, and the report says two
    assert curve["budget"] == "flops_reduction" and curve["bn_recalibration_batches"] == 2
    assert curve["accuracy"] == (
        "top-1 test accuracy right after pruning, before any fine-tuning; BatchNorm "
        "running statistics re-estimated on 2 training batches"
    )
    by_name = {c["criterion"]: c for c in curve["curves"]}
    assert list(by_name) == ["cpmc-auto", "cpmc", "l1", "random"]
    cpmc = by_name["cpmc"]
    assert (cpmc["preset"], cpmc["alpha"], cpmc["beta"]) == ("resnet", 0.0, 0.0)
    assert cpmc["label"] == "cpmc (resnet preset: alpha=0, beta=0)"
    assert by_name["cpmc-auto"]["label"] == prune["label"]
    assert by_name["l1"]["alpha"] is None and by_name["l1"]["label"] == "l1"
    assert [p["rate"] for p in cpmc["points"]] == [0.3, 0.5, 0.7]
    assert all("accuracy_before_bn_recalibration" in p for p in cpmc["points"])


def test_report_prunes_each_curve_with_its_named_settings(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[CriterionSettings] = []
    real = CriterionSettings.prune  # what write_report calls for every point

    def recording(settings, model, example_inputs, **kwargs):
        used.append(settings)
        return real(settings, model, example_inputs, **kwargs)

    monkeypatch.setattr(CriterionSettings, "prune", recording)
    common = ["--baseline", str(demo_dir / "baseline.pt"), "--rates", "0.4", *TINY]
    final = ["--checkpoint", str(demo_dir / "finetuned.pt")]
    argv = ["report", *common, *final, "--criteria", "cpmc-auto", "cpmc", "cpmc-a", "l1"]
    assert main([*argv, "--out-dir", str(tmp_path / "inherit")]) == 0
    importances = [s.importance(None) for s in used]
    assert [(s.criterion, s.preset, s.alpha, s.beta) for s in used] == [
        ("cpmc-auto", None, None, None),  # the prune step's: calibrated at the rate
        ("cpmc", None, 0.1, 0.5),  # CPMC's defaults: no prune step used cpmc
        ("cpmc-a", None, 0.1, 0.5),
        ("l1", None, None, None),
    ]
    assert (importances[1].alpha, importances[1].beta) == (0.1, 0.5)
    assert importances[2].weight_dependency is False
    # a prune step with fixed weights passes them on to its own criterion's curve
    used.clear()
    pruned = ["--checkpoint", str(demo_dir / "pruned-cpmc.pt")]
    prune = ["prune", "--checkpoint", str(demo_dir / "baseline.pt"), "--criterion", "cpmc"]
    prune += ["--preset", "resnet", "--out", pruned[1], *TINY]
    assert main(prune) == 0
    used.clear()
    argv = ["report", *common, *pruned, "--criteria", "cpmc", "l1"]
    assert main([*argv, "--out-dir", str(tmp_path / "fixed")]) == 0
    assert [(s.criterion, s.preset, s.alpha, s.beta) for s in used][0] == (
        "cpmc", "resnet", 0.0, 0.0,
    )  # fmt: skip


def test_reports_own_cpmc_settings_set_every_cpmc_curve(demo_dir: Path) -> None:
    final = Checkpoint.load(demo_dir / "finetuned.pt")  # pruned with cpmc-auto
    base = ["report", "--baseline", "b.pt", "--checkpoint", "f.pt", "--out-dir", "r"]
    args = build_parser().parse_args([*base, "--criteria", "cpmc", "cpmc-a", "random"])
    assert [s.label for s in cli_main._curve_settings(args, final)] == [
        "cpmc (default: alpha=0.1, beta=0.5)",
        "cpmc-a (default: alpha=0.1, beta=0.5)",
        "random",
    ]
    args = build_parser().parse_args(
        [*base, "--criteria", "cpmc-auto", "cpmc", "--preset", "resnet"]
    )  # as the demo: the preset sets the fixed-weight curve, cpmc-auto chooses its own
    assert [s.label for s in cli_main._curve_settings(args, final)] == [
        "cpmc-auto (calibrated at each budget)",
        "cpmc (resnet preset: alpha=0, beta=0)",
    ]
    args = build_parser().parse_args([*base, "--criteria", "cpmc", "cpmc", "--preset", "vgg",
                                      "--beta", "0.7"])  # fmt: skip
    (only,) = cli_main._curve_settings(args, final)  # one curve per criterion
    assert (only.preset, only.alpha, only.beta) == ("vgg", 0.1, 0.7)
    assert only.label == "cpmc (vgg preset, beta set: alpha=0.1, beta=0.7)"
    assert only.describe() == (
        "criterion cpmc: alpha=0.1 (the vgg preset), beta=0.7 (--beta, overrides the vgg "
        "preset's 0.25)"
    )


def test_the_plots_have_titles_labels_and_the_settings() -> None:
    before = {f"layer{i}.conv{j}": 16 for i in range(1, 4) for j in (1, 2)}
    after = {name: 8 for name in before}
    prune = {
        "label": "cpmc (resnet preset: alpha=0, beta=0)",
        "budget": {"flops_reduction": 0.5},
    }
    fig = channels_figure(before, after, model="resnet20", dataset="digits", prune=prune)
    ax = fig.axes[0]
    assert ax.get_title() == (
        "Channels per layer: resnet20 on digits\n"
        "pruned with cpmc (resnet preset: alpha=0, beta=0) to 50 % fewer FLOPs"
    )
    assert ax.get_xlabel() == "output channels" and ax.get_ylabel() == "layer"
    ticks = ax.get_yticklabels()
    assert [t.get_text() for t in ticks] == list(before)
    assert all(t.get_rotation() == 0 and t.get_fontsize() >= 7 for t in ticks)  # legible
    curves = [
        {"label": prune["label"], "points": [{"rate": 0.3, "accuracy": 0.9}]},
        {"label": "l1", "points": [{"rate": 0.3, "accuracy": 0.8}]},
    ]
    fig = curve_figure(curves, 0.95, model="resnet20", dataset="digits", prune=prune, bn_batches=7)
    ax = fig.axes[0]
    assert fig.get_suptitle() == "Accuracy vs FLOPs prune rate: resnet20 on digits"
    assert ax.get_title() == (
        "every criterion pruned to the same exact MACs budget by CPMCPruner; accuracy right "
        "after pruning,\nbefore any fine-tuning, BatchNorm running statistics re-estimated "
        "on 7 training batches"
    )
    assert ax.get_xlabel() == "FLOPs prune rate (%)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "cpmc (resnet preset: alpha=0, beta=0)",
        "l1",
        "baseline (not pruned)",
        "the prune step's budget (50 %)",
    ]
    assert list(ax.lines[0].get_ydata()) == [90.0]


def test_the_demo_writes_both_plots(demo_dir: Path) -> None:
    for name in ("channels.png", "prune_rate.png"):
        data = (demo_dir / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
