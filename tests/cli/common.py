"""Arguments and checks shared by the cpmc-prune tests."""

from __future__ import annotations

import pytest

from cpmc_plugin.cli import main

__all__ = ["DEMO", "SMALLEST", "TINY", "cli_error"]

TINY = ["--train-subset", "100", "--batch-size", "50", "--threads", "1"]
SMALLEST = ["--train-subset", "50", "--batch-size", "25", "--threads", "1"]
DEMO = ["--epochs", "1", "--finetune-epochs", "1", "--train-subset", "100", "--threads", "1"]


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``cpmc-prune argv``: it must exit 2 with a one-line error, which is returned."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err
