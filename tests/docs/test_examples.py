"""The examples run as the README says (shortened where they take options)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_oicsr_then_cpmc_reaches_the_budget() -> None:
    pytest.importorskip("sklearn")
    out = run(
        "oicsr_then_cpmc.py",
        "--epochs",
        "1",
        "--sparse-epochs",
        "1",
        "--finetune-epochs",
        "2",
        "--steps",
        "2",
    )
    macs = re.search(r"MACs [\d,]+ -> [\d,]+ \(-(\d+\.\d)%", out)
    assert macs is not None, out
    assert abs(float(macs.group(1)) - 50.0) <= 0.5
    line = next(line for line in out.splitlines() if "accuracy:" in line)
    accuracies = re.findall(r"(\d+\.\d+)%", line)
    assert len(accuracies) == 4 and all(0 <= float(a) <= 100 for a in accuracies)
