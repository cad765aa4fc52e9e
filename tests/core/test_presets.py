"""The presets and the default weights are the choices the benchmarks recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpmc_plugin.core.presets import DEFAULT_ALPHA, DEFAULT_BETA, get_preset, list_presets

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("name", list_presets())
def test_presets_are_the_measured_choice(name: str) -> None:
    """Each preset is the (alpha, beta) that benchmarks/select_presets.py recorded."""
    recorded = json.loads((RESULTS / "select_presets.json").read_text())
    chosen = recorded["chosen"][name]
    preset = get_preset(name)
    assert (preset.alpha, preset.beta) == (chosen["alpha"], chosen["beta"])


def test_default_weights_are_the_best_single_pair() -> None:
    recorded = json.loads((RESULTS / "select_presets.json").read_text())["overall_best"]
    assert (recorded["alpha"], recorded["beta"]) == (DEFAULT_ALPHA, DEFAULT_BETA)
