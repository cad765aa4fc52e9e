"""cpmc-prune's errors: one line, in words, naming the CLI's own flags."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import cpmc_plugin.cli._common as cli_common
import cpmc_plugin.cli.commands as cli_main
from cpmc_plugin.cli import Checkpoint, build_parser, main
from tests.cli.common import cli_error

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


class Foreign:
    """An object that safe loading (``weights_only=True``) refuses."""


def test_a_directory_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    err = cli_error(["evaluate", "--checkpoint", str(tmp_path)], capsys)
    assert f"checkpoint {tmp_path} is a directory; expected a checkpoint file" in err
    assert "does not exist" not in err
    err = cli_error(["prune", "--checkpoint", "x.pt", "--out", str(tmp_path)], capsys)
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
        err = cli_error(["evaluate", "--checkpoint", str(tmp_path / name)], capsys)
        assert message in err, name
        assert "(101)" not in err and "Weights only load failed" not in err
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    err = cli_error(["evaluate", "--checkpoint", str(tmp_path / "flipped.pt")], capsys)
    assert "is damaged: the checksum of" in err
    torch.save({"format": "cpmc-prune/checkpoint/v1", "x": Foreign()}, tmp_path / "obj.pt")
    err = cli_error(["evaluate", "--checkpoint", str(tmp_path / "obj.pt")], capsys)
    assert "is not a checkpoint written by cpmc-prune: it holds objects that safe loading" in err
    assert "Foreign" in err


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
def test_data_set_errors_name_the_clis_flags(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if dataset == "cifar10":
        pytest.importorskip("torchvision")
    argv = ["train", "--model", "resnet20", "--dataset", dataset, "--epochs", "1"]
    err = cli_error([*argv, "--data-root", str(tmp_path), "--out", str(tmp_path / "x.pt")], capsys)
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
    assert message in cli_error([*argv, "--checkpoint", "b.pt", "--out", str(out)], capsys)
    assert not out.exists()


def test_report_refuses_cpmc_settings_without_a_cpmc_curve(
    demo_dir: Path, tmp_path: Path, capsys
) -> None:
    argv = ["report", "--baseline", str(demo_dir / "baseline.pt"), "--checkpoint"]
    argv += [str(demo_dir / "finetuned.pt"), "--out-dir", str(tmp_path / "r")]
    err = cli_error([*argv, "--criteria", "l1", "--alpha", "0.2"], capsys)
    assert "--alpha set the cpmc curves with fixed weights, but --criteria has none" in err
    err = cli_error([*argv, "--criteria", "cpmc-auto", "--preset", "resnet"], capsys)
    assert "--preset set the cpmc curves with fixed weights, but --criteria has none" in err


def test_a_negative_calibration_fine_tune_is_refused(capsys) -> None:
    argv = ["prune", "--checkpoint", "b.pt", "--out", "x.pt", "--criterion", "cpmc-auto"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--calibration-finetune-steps=-1"])
    assert exit_info.value.code == 2
    message = "argument --calibration-finetune-steps: must be an integer >= 0, got -1"
    assert message in capsys.readouterr().err
