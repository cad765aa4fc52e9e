"""Pruning results are bit-identical to the golden values recorded before the layout refactor.

``tests/golden/pruning.json`` was recorded by ``tests/golden/record.py`` from an archive of
the commit it names. Each case of ``tests/golden/cases.py`` is run again here and must give
the same shapes, then the same digests, reports and pruning histories, to the bit. The
cases skip when torch, torch-pruning, NNI, Python or torch's CPU kernels differ from the
recording, since another build may round differently.

On another CPU model than the recording's (``processor`` in the golden file; unknown
counts as another) the digests of values that float kernels computed (every output, and
what the sparse-training cases trained) are left out, since the kernels block their sums
per CPU model; everything the pruning decides is still compared to the bit.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

pytest.importorskip("nni")

from .golden.cases import (  # noqa: E402
    CASES,
    GOLDEN_FILE,
    SLOW,
    kernel_dependent,
    processor,
    run_case,
    shapes_in,
    versions,
)

__all__: list[str] = []


def _golden() -> dict[str, Any]:
    if not os.path.exists(GOLDEN_FILE):
        return {}
    with open(GOLDEN_FILE, encoding="utf-8") as file:
        data: dict[str, Any] = json.load(file)
    return data


GOLDEN = _golden()


def _skip_reason() -> str | None:
    if not GOLDEN:
        return f"no golden values at {GOLDEN_FILE}: run tests/golden/record.py"
    now = versions()
    then = GOLDEN["versions"]
    differ = [f"{key} {then.get(key)} -> {now[key]}" for key in now if then.get(key) != now[key]]
    if differ:
        return (
            "golden values were recorded with other versions ("
            + ", ".join(differ)
            + "); results may round differently: re-record them on the pre-refactor commit"
        )
    return None


def _params() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
        for name in CASES
    ]


def test_every_case_is_recorded() -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    assert sorted(GOLDEN["cases"]) == sorted(CASES)


@pytest.mark.parametrize("name", _params())
def test_pruning_is_bit_identical(name: str) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    if name not in GOLDEN["cases"]:
        pytest.fail(f"{name} has no golden value: record it on the pre-refactor commit")
    expected = GOLDEN["cases"][name]
    result = run_case(name)
    assert shapes_in(result) == shapes_in(expected), f"{name}: shapes differ"
    if GOLDEN.get("processor") != processor():
        result, expected = _exact_part(name, result), _exact_part(name, expected)
    assert result == expected, f"{name}: same shapes, different values"


def _exact_part(name: str, result: Any, where: str = "") -> Any:
    """``result`` without the digests that another CPU model's kernels round differently."""
    if not isinstance(result, dict):
        return result
    kept = {}
    for key, value in result.items():
        path = f"{where}/{key}" if where else str(key)
        if not kernel_dependent(name, path):
            kept[key] = _exact_part(name, value, path)
    return kept


def test_the_exact_part_keeps_what_the_pruning_decides() -> None:
    result = {
        "channels": {"conv": 3},
        "state": {"digest": "s", "shapes": {}},
        "output": {"digest": "o", "shapes": {"y": [1, 2]}},
    }
    assert _exact_part("cpmc/x", result) == {
        "channels": {"conv": 3},
        "state": {"digest": "s", "shapes": {}},
        "output": {"shapes": {"y": [1, 2]}},
    }
    assert _exact_part("reg/x", result) == {
        "channels": {"conv": 3},
        "state": {"shapes": {}},
        "output": {"shapes": {"y": [1, 2]}},
    }
