"""Fixtures of the cpmc-prune tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpmc_plugin.cli import main
from tests.cli.common import DEMO


@pytest.fixture(scope="package")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo, once for the cpmc-prune tests."""
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out-dir", str(out), *DEMO]) == 0
    return out
