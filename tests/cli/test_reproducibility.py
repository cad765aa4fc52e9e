"""cpmc-prune runs are reproducible: the same seed gives the same weights, reports and demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cpmc_plugin.cli import Checkpoint, main
from cpmc_plugin.data import make_loaders
from tests.cli.common import DEMO, SMALLEST

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return Checkpoint.load(path).state_dict


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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
