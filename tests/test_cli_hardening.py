"""cpmc-prune hardening: reproducible runs, a self-consistent demo, clear errors, threads."""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch

import cpmc_plugin.cli._common as cli_common
import cpmc_plugin.cli.commands as cli_main
from cpmc_plugin.cli import Checkpoint, build_parser, main
from cpmc_plugin.cli.report import channels_figure, curve_figure
from cpmc_plugin.cli.settings import CriterionSettings, resolve_threads
from cpmc_plugin.data import make_loaders

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--train-subset", "100", "--batch-size", "50", "--threads", "1"]
SMALLEST = ["--train-subset", "50", "--batch-size", "25", "--threads", "1"]
DEMO = ["--epochs", "1", "--finetune-epochs", "1", "--train-subset", "100", "--threads", "1"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo, once for the module."""
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out-dir", str(out), *DEMO]) == 0
    return out


class Foreign:
    """An object that safe loading (``weights_only=True``) refuses."""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).state_dict


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- 6: reproducible
def test_train_with_the_same_seed_gives_bit_identical_weights(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.pt"
        argv = ["train", "--model", "resnet20", "--epochs", "2", "--seed", seed]
        assert main([*argv, "--out", str(out), *SMALLEST]) == 0
        runs[name] = Checkpoint.load(out)
    assert _identical(runs["a"].state_dict, runs["b"].state_dict)
    assert runs["a"].metrics == runs["b"].metrics
    assert not _identical(runs["a"].state_dict, runs["c"].state_dict)  # the seed matters


def test_report_run_twice_gives_the_same_report_json(demo_dir: Path, tmp_path: Path) -> None:
    argv = ["report", "--baseline", str(demo_dir / "baseline.pt"), "--checkpoint"]
    argv += [str(demo_dir / "finetuned.pt"), "--criteria", "random", "cpmc", "--rates", "0.5"]
    argv += ["--preset", "resnet"]  # the demo's cpmc curve: the preset it is named after
    argv += ["--batch-size", "64", "--train-subset", "100", "--threads", "1"]  # as the demo
    texts = []
    for name in ("a", "b"):
        assert main([*argv, "--out-dir", str(tmp_path / name)]) == 0
        texts.append((tmp_path / name / "report.json").read_text())
    assert texts[0] == texts[1]
    curves = {c["criterion"]: c for c in json.loads(texts[0])["prune_rate_curve"]["curves"]}
    assert list(curves) == ["random", "cpmc"]
    # each point is seeded on its own and sees the same BatchNorm batches: the demo's
    # report, which pruned 9 points in another order, has the same numbers at 50 %
    demo = json.loads((demo_dir / "report" / "report.json").read_text())
    for curve in demo["prune_rate_curve"]["curves"]:
        if curve["criterion"] in curves:
            (point,) = [p for p in curve["points"] if p["rate"] == 0.5]
            assert curves[curve["criterion"]]["points"] == [point], curve["criterion"]


@pytest.mark.slow
def test_the_demo_run_twice_gives_identical_checkpoints_and_report(
    demo_dir: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    assert main(["demo", "--out-dir", str(again), *DEMO]) == 0
    for name in ("baseline.pt", "pruned.pt", "finetuned.pt"):
        assert _identical(_weights(demo_dir / name), _weights(again / name)), name
    first = json.loads((demo_dir / "report" / "report.json").read_text())
    assert json.loads((again / "report" / "report.json").read_text()) == first


def test_loaders_are_seeded_and_do_not_touch_the_global_generator() -> None:
    def first_batch(seed: int, workers: int) -> torch.Tensor:
        train, _, _ = make_loaders("digits", batch_size=16, num_workers=workers, seed=seed)
        return next(iter(train))[0]

    assert torch.equal(first_batch(1, 2), first_batch(1, 2))  # augmentation in workers
    assert not torch.equal(first_batch(1, 2), first_batch(2, 2))
    _, test, _ = make_loaders("digits", batch_size=100)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in test:  # evaluating must not change what training draws next
        pass
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------- 7: the demo's report
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


def _report(directory: Path) -> dict:
    return json.loads((directory / "report.json").read_text())


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


# ---------------------------------------------------------------------- 9: rough edges
def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_directory_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    err = _error(["evaluate", "--checkpoint", str(tmp_path)], capsys)
    assert f"checkpoint {tmp_path} is a directory; expected a checkpoint file" in err
    assert "does not exist" not in err
    err = _error(["prune", "--checkpoint", "x.pt", "--out", str(tmp_path)], capsys)
    assert f"--out {tmp_path} is a directory; expected the path of a checkpoint file" in err


def test_damaged_checkpoints_say_what_is_wrong_in_words(
    demo_dir: Path, tmp_path: Path, capsys
) -> None:
    good = (demo_dir / "baseline.pt").read_bytes()
    cases = {
        "text.pt": (b"not a checkpoint", "it is not a torch.save archive (a zip file)"),
        "empty.pt": (b"", "is empty (0 bytes)"),
        "cut.pt": (good[: len(good) // 2], "is truncated: a torch.save archive whose end"),
        "pickle.pt": (pickle.dumps([1, 2]), "it is not a torch.save archive"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        err = _error(["evaluate", "--checkpoint", str(tmp_path / name)], capsys)
        assert message in err, name
        assert "(101)" not in err and "Weights only load failed" not in err
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    err = _error(["evaluate", "--checkpoint", str(tmp_path / "flipped.pt")], capsys)
    assert "is damaged: the checksum of" in err
    torch.save({"format": "cpmc-prune/checkpoint/v1", "x": Foreign()}, tmp_path / "obj.pt")
    err = _error(["evaluate", "--checkpoint", str(tmp_path / "obj.pt")], capsys)
    assert "is not a checkpoint written by cpmc-prune: it holds objects that safe loading" in err
    assert "Foreign" in err


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
def test_data_set_errors_name_the_clis_flags(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if dataset == "cifar10":
        pytest.importorskip("torchvision")
    argv = ["train", "--model", "resnet20", "--dataset", dataset, "--epochs", "1"]
    err = _error([*argv, "--data-root", str(tmp_path), "--out", str(tmp_path / "x.pt")], capsys)
    assert "not found" in err
    assert "--data-root DIR" in err and "--download" in err
    assert "root=" not in err and "download=True" not in err
    assert not (tmp_path / "x.pt").exists()


def test_download_flag_reaches_the_data_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    real = cli_common.make_loaders  # the name loaders() looks up

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{**kwargs, "download": False})

    monkeypatch.setattr(cli_common, "make_loaders", recording)
    args = build_parser().parse_args(["evaluate", "--checkpoint", "x.pt", "--download"])
    ckpt = Checkpoint("resnet20", {"num_classes": 10, "in_channels": 1}, "digits", 8, {})
    cli_common.loaders(ckpt, args, cli_main.distributed())
    assert seen["download"] is True
    assert seen["option_names"] == {"root": "--data-root DIR", "download": "--download"}


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "--criterion", "l1", "--alpha", "0.2"], "--alpha is for the cpmc criteria"),
        (
            ["prune", "--criterion", "taylor", "--beta", "1", "--preset", "vgg"],
            "--beta, --preset are for the cpmc criteria, not 'taylor'",
        ),
        (
            ["prune", "--criterion", "cpmc", "--calibration-finetune-steps", "3"],
            "--calibration-finetune-steps is for cpmc-auto, whose calibration it fine-tunes; "
            "criterion 'cpmc' is not calibrated",
        ),
    ],
)
def test_cpmc_options_for_other_criteria_are_refused(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "x.pt"
    assert message in _error([*argv, "--checkpoint", "b.pt", "--out", str(out)], capsys)
    assert not out.exists()


def test_report_refuses_cpmc_settings_without_a_cpmc_curve(
    demo_dir: Path, tmp_path: Path, capsys
) -> None:
    argv = ["report", "--baseline", str(demo_dir / "baseline.pt"), "--checkpoint"]
    argv += [str(demo_dir / "finetuned.pt"), "--out-dir", str(tmp_path / "r")]
    err = _error([*argv, "--criteria", "l1", "--alpha", "0.2"], capsys)
    assert "--alpha set the cpmc curves with fixed weights, but --criteria has none" in err
    err = _error([*argv, "--criteria", "cpmc-auto", "--preset", "resnet"], capsys)
    assert "--preset set the cpmc curves with fixed weights, but --criteria has none" in err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help_and_a_default() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == set(cli_main.COMMANDS)
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {action.option_strings}"
            assert action.help and action.help.strip(), where
            shown = formatter._get_help_string(action)
            assert "default" in shown or action.required, where
            assert not shown.endswith("(default: None)"), where
            if action.required:
                assert shown.endswith("(required)"), where


def test_help_shows_help_text_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "how channels are ranked (default: cpmc)" in text
    assert "iterative pruning steps (default: 1)" in text
    assert "(default: 0.5 unless --params-reduction is given)" in text
    assert "the checkpoint to prune (required)" in text


# ---------------------------------------------------------------------- 10: threads
@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace every command by one that records the thread count it runs with."""
    seen: list[int] = []
    for name in cli_main.COMMANDS:
        monkeypatch.setitem(
            cli_main.COMMANDS, name, lambda args: seen.append(torch.get_num_threads())
        )
    return seen


REQUIRED = {
    "train": ["--model", "resnet20", "--out", "x.pt"],
    "prune": ["--checkpoint", "b.pt", "--out", "x.pt"],
    "finetune": ["--checkpoint", "b.pt", "--out", "x.pt"],
    "evaluate": ["--checkpoint", "b.pt"],
    "report": ["--baseline", "b.pt", "--checkpoint", "f.pt", "--out-dir", "r"],
    "demo": [],
}


@pytest.mark.parametrize("command", list(REQUIRED))
def test_threads_sets_torchs_thread_count_for_every_command(
    command: str, recorder: list[int], monkeypatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert main([command, *REQUIRED[command], "--threads", "2"]) == 0
    assert recorder == [2]
    assert f"cpmc-prune {command}: seed 0, 2 threads (--threads)" in capsys.readouterr().out
    assert torch.get_num_threads() == before  # given back to the caller


def test_omp_num_threads_is_honoured_without_threads(
    recorder: list[int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert main(["evaluate", "--checkpoint", "b.pt"]) == 0
    assert main(["evaluate", "--checkpoint", "b.pt", "--threads", "2"]) == 0  # the flag wins
    assert recorder == [3, 2]
    assert "3 threads (OMP_NUM_THREADS)" in capsys.readouterr().out
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert main(["evaluate", "--checkpoint", "b.pt"]) == 0
    assert main(["demo"]) == 0  # small models: one thread unless told otherwise
    assert recorder[2:] == [torch.get_num_threads(), 1]
    printed = capsys.readouterr().out
    assert f"{recorder[2]} thread" in printed and "(torch's default)" in printed


def test_without_flag_or_variable_torchs_count_is_kept_and_the_demo_caps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert resolve_threads(None) == (2, "torch's default")
        assert resolve_threads(None, cap=1) == (1, "the demo's default: at most 1")
        assert resolve_threads(None, cap=4) == (2, "torch's default")
        assert resolve_threads(3, cap=1) == (3, "--threads")
    finally:
        torch.set_num_threads(before)


def test_a_negative_calibration_fine_tune_is_refused(capsys) -> None:
    argv = ["prune", "--checkpoint", "b.pt", "--out", "x.pt", "--criterion", "cpmc-auto"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--calibration-finetune-steps=-1"])
    assert exit_info.value.code == 2
    message = "argument --calibration-finetune-steps: must be an integer >= 0, got -1"
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "argument --threads: must be an integer >= 1, got 0"),
        ("-1", "argument --threads: must be an integer >= 1, got -1"),
        ("x", "argument --threads: 'x' is not an integer"),
        ("1.5", "argument --threads: '1.5' is not an integer"),
    ],
)
def test_bad_thread_counts_are_refused(value: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", "b.pt", f"--threads={value}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_a_bad_omp_num_threads_is_refused(
    value: str, recorder: list[int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    err = _error(["evaluate", "--checkpoint", "b.pt"], capsys)
    assert f"OMP_NUM_THREADS='{value}' is not a thread count (an integer >= 1)" in err
    assert "--threads N" in err and recorder == []
    assert main(["evaluate", "--checkpoint", "b.pt", "--threads", "1"]) == 0  # the flag wins


def test_the_demo_writes_both_plots(demo_dir: Path) -> None:
    for name in ("channels.png", "prune_rate.png"):
        data = (demo_dir / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
