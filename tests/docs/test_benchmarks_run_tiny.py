"""Every benchmark script runs end to end with tiny settings and writes its JSON.

One subprocess per ``benchmarks/*.py`` not starting with ``_``, as a user runs it
(``python benchmarks/x.py``), with ``--out`` (and caches, work folders) under
``tmp_path``. A script without an entry in :data:`TINY_ARGS` fails the test, so a new
benchmark has to say how to run it small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import needs_fashion_mnist

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))

#: per script, its tiny options; ``{tmp}`` becomes the test's ``tmp_path``. Each writes
#: ``{tmp}/<script>.json``.
TINY_ARGS: dict[str, list[str]] = {
    "criteria": [
        "--dataset", "digits", "--models", "tiny-vgg", "--grid-model", "tiny-vgg",
        "--grid-rates", "0.5", "--criteria", "l1", "cpmc-default", "--epochs", "1",
        "--train-subset", "256", "--test-subset", "128", "--finetune-subset", "128",
        "--calib-batches", "1", "--seeds", "0", "--latency-reps", "1", "--threads", "1",
        "--device", "cpu", "--cache-dir", "{tmp}/cache", "--out", "{tmp}/criteria.json",
    ],
    "host_test_suite": [
        "--host-tests", "{tmp}/host_tests", "--modes", "pruner", "--timeout", "60",
        "--workdir", "{tmp}/work", "--out", "{tmp}/host_test_suite.json",
    ],
    "nni_criteria": [
        "--dataset", "digits", "--model", "resnet20", "--epochs", "1", "--finetune-epochs", "1",
        "--train-subset", "256", "--seeds", "0", "--modes", "layer",
        "--pruners", "CPMCPruner", "L1NormPruner", "--threads", "1",
        "--cache-dir", "{tmp}/cache", "--out", "{tmp}/nni_criteria.json",
    ],
    "proxy_check": [
        "--dataset", "digits", "--model", "resnet20", "--rate", "0.5", "--epochs", "1",
        "--train-subset", "256", "--test-subset", "128", "--finetune-subset", "128",
        "--calib-batches", "2", "--calibration-batches", "2", "--limit", "3",
        "--threads", "1", "--device", "cpu", "--cache-dir", "{tmp}/cache",
        "--out", "{tmp}/proxy_check.json",
    ],
    "prune_speed": [
        "--models", "resnet50", "--repeats", "1", "--image-size", "64", "--threads", "1",
        "--out", "{tmp}/prune_speed.json",
    ],
    "regularizer_overhead": [
        "--model", "resnet20", "--batch", "2", "--repeats", "1", "--warmup", "0",
        "--threads", "1", "--out", "{tmp}/regularizer_overhead.json",
    ],
    "select_presets": [
        "--families", "resnet", "--seeds", "0", "--alphas", "0.1", "--betas", "0.1",
        "--epochs", "1", "--image-size", "8", "--out", "{tmp}/select_presets.json",
    ],
    "sparse_training": [
        "--dataset", "digits", "--methods", "bn-fista", "--strength", "bn-fista=0.05",
        "--train-subset", "256",
        "--test-subset", "128", "--epochs", "1", "--sparse-epochs", "1",
        "--finetune-epochs", "1", "--threads", "1", "--cache-dir", "{tmp}/cache",
        "--out", "{tmp}/sparse_training.json",
    ],
    "transformer_scale": [
        "--layers", "1", "--tokens", "8", "--vocab", "512", "--out", "{tmp}/transformer_scale.json",
    ],
    "transformers_quality": [
        "--task", "lm", "--lm-steps", "2", "--finetune-steps", "1", "--seeds", "0",
        "--rates", "0.3", "--criteria", "l1", "cpmc-auto", "--cache-dir", "{tmp}/cache",
        "--out", "{tmp}/transformers_quality.json",
    ],
}  # fmt: skip

FAKE_HOST_TEST = """
import torch
import torch_pruning as tp


def test_prune_one_conv():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    example = torch.randn(1, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.5, ignored_layers=[model[2]],
    )
    pruner.step()
    assert model[0].out_channels < 8
"""


def _results_state() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in RESULTS.rglob("*") if p.is_file()}


def _run_tiny(script: str, args: list[str], tmp_path: Path) -> dict:
    """Run ``benchmarks/<script>.py args`` as a user would; its JSON, checked written to
    ``tmp_path`` and not into benchmarks/results."""
    before = _results_state()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = json.loads((tmp_path / f"{script}.json").read_text(encoding="utf-8"))
    assert isinstance(written, dict) and written
    assert _results_state() == before, "the benchmark wrote into benchmarks/results"
    return written


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_tiny(script: str, tmp_path: Path) -> None:
    """The script exits 0 and writes its JSON into tmp_path, not into benchmarks/results."""
    if script not in TINY_ARGS:
        pytest.fail(f"benchmarks/{script}.py has no entry in TINY_ARGS of {Path(__file__).name}")
    if script == "host_test_suite":
        (tmp_path / "host_tests").mkdir()
        (tmp_path / "host_tests" / "test_fake.py").write_text(FAKE_HOST_TEST, encoding="utf-8")
    written = _run_tiny(script, [a.replace("{tmp}", str(tmp_path)) for a in TINY_ARGS[script]],
                        tmp_path)  # fmt: skip
    if script == "host_test_suite":  # the fake host test ran, with CPMCPruner substituted
        assert (
            written["tests"]["test_fake.py::test_prune_one_conv"]["modes"]["pruner"]["outcome"]
            == "passed"
        )


@pytest.mark.slow
@needs_fashion_mnist
def test_sparse_training_runs_tiny_on_fashion_mnist(tmp_path: Path) -> None:
    """The benchmark's own data set (the smoke run above uses the embedded digits)."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in TINY_ARGS["sparse_training"]]
    args[args.index("digits")] = "fashion-mnist"
    written = _run_tiny("sparse_training", args, tmp_path)
    assert written["options"]["dataset"] == "fashion-mnist"
    assert [row["method"] for row in written["rows"]] == ["bn-fista"]


def test_every_tiny_entry_names_a_script() -> None:
    """No stale TINY_ARGS entry for a script that was removed or renamed."""
    assert sorted(TINY_ARGS) == SCRIPTS


def _row(criterion: str, recal: float, ft: list[float]) -> dict:
    mean = sum(ft) / len(ft)
    std = (sum((v - mean) ** 2 for v in ft) / (len(ft) - 1)) ** 0.5 if len(ft) > 1 else None
    return {
        "criterion": criterion,
        "rate": 0.5,
        "acc_bn_recal": recal,
        "acc_ft_mean": mean,
        "acc_ft_std": std,
    }


def test_the_goal_table_by_hand() -> None:
    """cpmc-auto 90.0 ± 1.0 against l2 91.5 ± 0.5 misses (91.5 - 1.0 > 90.0); against
    91.0 it is met within one standard deviation; random outranks cpmc-default."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _criteria_report import goal_cells, goal_table
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = [
        _row("cpmc-auto", 80.0, [89.0, 90.0, 91.0]),  # std 1.0
        _row("l2", 81.0, [91.0, 91.5, 92.0]),  # std 0.5
        _row("l1", 79.0, [88.0, 88.0, 88.0]),
        _row("random", 70.0, [85.0, 85.0, 85.0]),
        _row("cpmc-default", 60.0, [86.0, 86.0, 86.0]),
    ]
    result = {"model": "m", "rates": [0.5], "rows": rows}
    (cell,) = goal_cells(result)
    assert cell["acc_ft_mean"]["best_host"] == "l2"
    assert cell["acc_ft_mean"]["slack"] == 1.0
    assert cell["acc_ft_mean"]["met"] is False
    assert cell["acc_bn_recal"] == {
        "auto": 80.0,
        "best_host": "l2",
        "best_host_value": 81.0,
        "slack": 0.0,
        "met": False,
        "cpmc_below_random": ["cpmc-default"],
    }
    rows[1] = _row("l2", 79.5, [90.5, 91.0, 91.5])  # 91.0 - 1.0 <= 90.0: met
    (cell,) = goal_cells(result)
    assert cell["acc_ft_mean"]["met"] is True and cell["acc_bn_recal"]["met"] is True
    table = goal_table([result])
    assert "| m | 50% | fine-tuned | 90.00 | l2 91.00 (± 1.00) | yes | none |" in table


def _criteria_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import criteria
    finally:
        sys.path.remove(str(BENCHMARKS))
    return criteria


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("vgg16", "expected MODEL=EPOCHS"),
        ("vgg16=0", "EPOCHS >= 1"),
        ("vgg16=two", "expected MODEL=EPOCHS"),
        ("nosuchnet=3", "unknown model 'nosuchnet'"),
    ],
)
def test_model_epochs_rejects_bad_values(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _criteria_module().parse_args(["--model-epochs", value])
    assert message in capsys.readouterr().err


def test_model_epochs_override_epochs_per_model() -> None:
    criteria = _criteria_module()
    args = criteria.parse_args(["--epochs", "10", "--model-epochs", "vgg16=3", "densenet40=2"])
    assert args.model_epochs == {"vgg16": 3, "densenet40": 2}
    assert [criteria.epochs_of(args, m) for m in ("vgg16", "densenet40", "resnet20")] == [3, 2, 10]


@pytest.mark.slow
def test_resume_skips_a_finished_model_without_its_baseline(tmp_path: Path) -> None:
    """A second run with --resume and an empty cache trains nothing for a model whose cells
    are all in --out; asking for another baseline length is refused."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in TINY_ARGS["criteria"]]
    args += ["--model-epochs", "tiny-vgg=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(BENCHMARKS / "criteria.py"), *args, *extra]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    saved = json.loads((tmp_path / "criteria.json").read_text(encoding="utf-8"))
    assert saved["results"][0]["baseline"]["epochs"] == 1
    again = run("--resume", "--cache-dir", str(tmp_path / "empty"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[tiny-vgg] every cell is in" in again.stderr + again.stdout
    assert not (tmp_path / "empty").exists()  # no baseline trained or saved
    other = run("--resume", "--model-epochs", "tiny-vgg=2")
    assert other.returncode != 0
    assert "trained for 1 epochs, not 2" in other.stderr
