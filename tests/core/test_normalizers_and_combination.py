"""The host-free CPMC formula: normalizers and the combination of the criteria."""

from __future__ import annotations

import pytest
import torch

from cpmc_plugin.core.cpmc import combine_criteria, normalize


def test_normalizers_known_answers() -> None:
    e = torch.tensor([2.0, 4.0, 6.0])
    torch.testing.assert_close(normalize(e, "max-min"), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(normalize(e, "max"), torch.tensor([1 / 3, 2 / 3, 1.0]))
    torch.testing.assert_close(normalize(e, "l2"), e / 56**0.5)
    torch.testing.assert_close(normalize(e, None), e)


@pytest.mark.parametrize("method", ["max-min", "l2", "max", None])
@pytest.mark.parametrize("values", [[3.0, 3.0, 3.0], [0.0, 0.0], [5.0]])
def test_degenerate_layers_stay_finite(method: str | None, values: list[float]) -> None:
    assert torch.isfinite(normalize(torch.tensor(values), method)).all()


def test_unknown_normalizer() -> None:
    known = r"'max-min', 'l2', 'max', 'mean', None"
    with pytest.raises(ValueError, match=r"normalizer must be one of " + known):
        normalize(torch.ones(2), "z")


def test_combination_known_answer() -> None:
    got = combine_criteria(
        torch.tensor([0.2, 0.9]),
        torch.tensor([50.0, 100.0]),
        torch.tensor([10.0, 40.0]),
        params_max=100.0,
        macs_max=40.0,
        alpha=0.5,
        beta=2.0,
    )
    torch.testing.assert_close(got, torch.tensor([0.2 + 0.25 + 1.5, 0.9 + 0.0 + 0.0]))
