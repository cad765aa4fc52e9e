"""A real NNI experiment: the search space picks pruners by name, CPMC among them."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("nni")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nni_experiment"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_experiment_runs_cpmc_chosen_by_name(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("run_experiment", EXAMPLE / "run_experiment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run(
        port=free_port(),
        trial_args="--epochs 2 --finetune-epochs 1",
        workdir=str(tmp_path),
        python=sys.executable,
    )
    by_pruner = {r["parameter"]["pruner"]: r for r in results}
    assert set(by_pruner) == {"CPMCPruner", "L1NormPruner", "FPGMPruner"}
    assert all(r["status"] == "SUCCEEDED" for r in results)
    cpmc = by_pruner["CPMCPruner"]
    assert 0.0 <= cpmc["default"] <= 1.0
    assert 0.3 < cpmc["macs_reduction"] < 0.95 and cpmc["params_reduction"] > 0.3
    assert any(tmp_path.iterdir())  # NNI wrote under the configured working directory
