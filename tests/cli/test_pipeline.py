"""cpmc-prune: train -> prune -> finetune -> report on the embedded data, resume, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cpmc_plugin.cli.train as cli_train
from cpmc_plugin.cli import Checkpoint, main
from tests.cli.common import cli_error
from tests.helpers import assert_unchanged, model_state

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--train-subset", "200", "--batch-size", "50"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train -> prune -> finetune -> report, once for the module."""
    d = tmp_path_factory.mktemp("cli")
    assert (
        main(["train", "--model", "resnet20", "--epochs", "2", "--out", str(d / "base.pt"), *QUICK])
        == 0
    )
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                str(d / "base.pt"),
                "--criterion",
                "cpmc",
                "--flops-reduction",
                "0.5",
                "--preset",
                "resnet",
                "--out",
                str(d / "pruned.pt"),
                *QUICK,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(d / "pruned.pt"),
                "--epochs",
                "1",
                "--out",
                str(d / "ft.pt"),
                *QUICK,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "report",
                "--baseline",
                str(d / "base.pt"),
                "--checkpoint",
                str(d / "ft.pt"),
                "--out-dir",
                str(d / "report"),
                "--criteria",
                "cpmc",
                "l1",
                "taylor",
                "--rates",
                "0.3",
                "0.6",
                *QUICK,
            ]
        )
        == 0
    )
    return d


def test_the_pipeline_writes_json_and_plots_with_the_right_numbers(run_dir: Path) -> None:
    base, pruned = Checkpoint.load(run_dir / "base.pt"), Checkpoint.load(run_dir / "pruned.pt")
    final = Checkpoint.load(run_dir / "ft.pt")
    assert base.pruning_history == [] and pruned.pruning_history == final.pruning_history != []
    assert final.training is None  # finished: nothing to resume
    report = json.loads((run_dir / "report" / "report.json").read_text())
    baseline_row, final_row = report["rows"]
    assert baseline_row["params"] == base.metrics["baseline"]["params"]
    assert (
        final_row["macs"] == final.metrics["finetuned"]["macs"] == pruned.metrics["pruned"]["macs"]
    )
    assert abs(final_row["macs_reduction"] - 0.5) < 0.03  # one channel of resnet20 is ~2 %
    assert final_row["params_reduction"] == pytest.approx(
        1 - final_row["params"] / baseline_row["params"]
    )
    assert final_row["accuracy"] == pytest.approx(final.metrics["finetuned"]["accuracy"])
    model = final.build()
    after = {layer["name"]: layer["after"] for layer in report["layers"]}
    assert after["conv1"] == model.conv1.out_channels < 16
    curves = {c["criterion"]: c for c in report["prune_rate_curve"]["curves"]}
    assert set(curves) == {"cpmc", "l1", "taylor"}
    assert [p["rate"] for p in curves["l1"]["points"]] == [0.3, 0.6]
    assert curves["cpmc"]["label"] == "cpmc (resnet preset: alpha=0, beta=0)"  # as pruned
    for name in ("channels.png", "prune_rate.png"):
        data = (run_dir / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluate_prints_accuracy(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--checkpoint", str(run_dir / "ft.pt"), *QUICK]) == 0
    out = capsys.readouterr().out
    model = Checkpoint.load(run_dir / "ft.pt").build()
    assert f"{sum(p.numel() for p in model.parameters()):,} params" in out


def test_training_resumes_after_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_fit = cli_train.fit  # the name run_training looks up

    def interrupted_fit(*args, on_epoch_end, **kwargs):
        def stop_after_first(epoch: int, state: dict) -> None:
            on_epoch_end(epoch, state)
            raise KeyboardInterrupt

        real_fit(*args, on_epoch_end=stop_after_first, **kwargs)

    out = tmp_path / "base.pt"
    argv = ["train", "--model", "resnet20", "--epochs", "2", "--out", str(out), *QUICK]
    monkeypatch.setattr(cli_train, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    saved = Checkpoint.load(out)
    assert saved.training is not None and saved.training["next_epoch"] == 1
    monkeypatch.setattr(cli_train, "fit", real_fit)
    assert main([*argv, "--resume"]) == 0
    assert "resuming train at epoch 2 of 2" in capsys.readouterr().out
    done = Checkpoint.load(out)
    assert done.training is None and "baseline" in done.metrics


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "resnet57", "--out", "x.pt"], "invalid choice: 'resnet57'"),
        (
            ["train", "--model", "resnet20", "--dataset", "imagenet", "--out", "x.pt"],
            "invalid choice: 'imagenet'",
        ),
        (
            ["prune", "--checkpoint", "b.pt", "--criterion", "l3", "--out", "x.pt"],
            "invalid choice: 'l3'",
        ),
        (
            ["prune", "--checkpoint", "b.pt", "--flops-reduction", "1.2", "--out", "x.pt"],
            "must be in (0, 1), got 1.2",
        ),
        (
            ["prune", "--checkpoint", "b.pt", "--params-reduction", "0", "--out", "x.pt"],
            "must be in (0, 1), got 0",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_corrupt_and_foreign_checkpoints(tmp_path: Path, run_dir: Path, capsys) -> None:
    err = cli_error(["evaluate", "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert "none.pt does not exist" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "is not a checkpoint written by cpmc-prune" in cli_error(
        ["evaluate", "--checkpoint", str(corrupt)], capsys
    )
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    assert "is not a cpmc-prune checkpoint" in cli_error(
        ["evaluate", "--checkpoint", str(other)], capsys
    )
    foreign = Checkpoint.load(run_dir / "base.pt")
    foreign.model_name = "vgg16"  # the weights of a resnet20 under another architecture
    foreign.save(tmp_path / "foreign.pt")
    assert "do not fit a vgg16" in cli_error(
        ["evaluate", "--checkpoint", str(tmp_path / "foreign.pt")], capsys
    )


def test_existing_outputs_are_not_overwritten(tmp_path: Path, run_dir: Path, capsys) -> None:
    out = tmp_path / "pruned.pt"
    shutil.copy(run_dir / "pruned.pt", out)
    before = out.read_bytes()
    err = cli_error(
        [
            "prune",
            "--checkpoint",
            str(run_dir / "base.pt"),
            "--flops-reduction",
            "0.3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert "exists; pass --force" in err and out.read_bytes() == before
    err = cli_error(
        [
            "prune",
            "--checkpoint",
            str(run_dir / "base.pt"),
            "--criterion",
            "l1",
            "--preset",
            "vgg",
            "--out",
            str(tmp_path / "new.pt"),
        ],
        capsys,
    )
    assert "--preset is for the cpmc criteria" in err and not (tmp_path / "new.pt").exists()
    err = cli_error(
        [
            "report",
            "--baseline",
            str(run_dir / "base.pt"),
            "--checkpoint",
            str(run_dir / "ft.pt"),
            "--out-dir",
            str(run_dir / "report"),
        ],
        capsys,
    )
    assert "is not empty; pass --force" in err


@pytest.mark.slow
def test_torchrun_finetunes_on_two_gloo_processes(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "cpmc_plugin.cli",
            "finetune",
            "--checkpoint",
            str(run_dir / "pruned.pt"),
            "--epochs",
            "1",
            "--out",
            str(out),
            *QUICK,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = Checkpoint.load(out)
    assert result.training is None and "finetuned" in result.metrics
    assert result.pruning_history == Checkpoint.load(run_dir / "pruned.pt").pruning_history
    before = Checkpoint.load(run_dir / "pruned.pt").state_dict
    assert any(not torch.equal(before[k], v) for k, v in result.state_dict.items())


def test_demo_picks_the_preset_of_the_model_family() -> None:
    from cpmc_plugin.cli.commands import family_of

    assert [family_of(n) for n in ("resnet164", "VGG16", "densenet40", "tv:resnet18")] == [
        "resnet",
        "vgg",
        "densenet",
        "resnet",
    ]
    assert family_of("tv:mobilenet_v2") is None  # CPMC's default alpha/beta then


def test_both_checkpoint_formats_replay_a_history_the_same_way(tmp_path: Path) -> None:
    from cpmc_plugin import CPMCPruner, load_pruned, save_pruned
    from cpmc_plugin.models import create_model
    from cpmc_plugin.torch_pruning.history import plain_history, replay_history

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, in_channels=1)
    ckpt = Checkpoint("resnet20", {"num_classes": 3, "in_channels": 1}, "digits", 8, {})
    x = ckpt.example_inputs
    pruner = CPMCPruner(model, x, flops_reduction=0.4, ignored_layers=[model.classifier])
    pruner.step()
    history = pruner.pruning_history()
    saved = plain_history(history)

    replayed = create_model("resnet20", num_classes=3, in_channels=1)
    replay_history(replayed, saved, x)
    assert plain_history(history) == saved  # the history itself is left as it was
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in replayed.state_dict().items()} == shapes

    save_pruned(model, tmp_path / "m.pt", history)
    fresh = create_model("resnet20", num_classes=3, in_channels=1)
    from_file = load_pruned(fresh, tmp_path / "m.pt", x)
    from_ckpt = Checkpoint.of(model, like=ckpt, history=history).build()
    for net in (model, from_file, from_ckpt):
        net.eval()
    assert torch.equal(from_file(x), model(x)) and torch.equal(from_ckpt(x), model(x))

    untouched = create_model("resnet20", num_classes=3, in_channels=1)
    before = model_state(untouched)
    replay_history(untouched, [], "not traced")  # an empty history traces nothing
    assert_unchanged(untouched, before)
