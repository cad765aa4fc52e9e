"""Proximal maps: soft-thresholding, group soft-thresholding and top-k, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cpmc_plugin.core.proximal import group_shrink_factors, soft_threshold, top_k_factors


def apply_factors(groups: list[torch.Tensor], factors: torch.Tensor) -> list[torch.Tensor]:
    """Every group multiplied by its factor (what the regularizers do to the weights)."""
    return [g * f for g, f in zip(groups, factors, strict=True)]


def sq_norms_of(groups: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([g.pow(2).sum() for g in groups])


# ---------------------------------------------------------------- soft_threshold
def test_soft_threshold_known_values() -> None:
    x = torch.tensor([-3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5])
    got = soft_threshold(x, 1.0)
    # sign(x) * max(|x| - 1, 0):
    # -3 -> -(3-1) = -2; -1 -> |x| = t -> 0; -0.25 -> 0; 0 -> 0; 0.5 -> 0; 1 -> 0; 2.5 -> 1.5
    expected = torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5])
    assert torch.equal(got, expected)


def test_soft_threshold_at_exactly_the_threshold_is_exactly_zero() -> None:
    x = torch.tensor([0.75, -0.75])
    got = soft_threshold(x, 0.75)  # |x| - t = 0 exactly
    assert (got == 0).all()
    assert torch.equal(got.abs(), torch.zeros(2))


def test_soft_threshold_zero_threshold_is_the_identity() -> None:
    x = torch.tensor([-1.5, 0.0, 2.0])
    assert torch.equal(soft_threshold(x, 0.0), x)


def test_soft_threshold_per_element_tensor_threshold() -> None:
    x = torch.tensor([2.0, -2.0, 2.0])
    t = torch.tensor([0.5, 1.5, 3.0])
    # 2 - 0.5 = 1.5; -(2 - 1.5) = -0.5; max(2 - 3, 0) = 0
    assert torch.equal(soft_threshold(x, t), torch.tensor([1.5, -0.5, 0.0]))


def test_soft_threshold_does_not_modify_its_input() -> None:
    x = torch.tensor([3.0, -3.0])
    soft_threshold(x, 1.0)
    assert torch.equal(x, torch.tensor([3.0, -3.0]))


# ---------------------------------------------------------------- group_shrink_factors
def test_group_shrink_factors_known_values() -> None:
    sq = torch.tensor([9.0, 16.0, 0.0])  # norms 3, 4, 0
    got = group_shrink_factors(sq, torch.tensor([1.0, 2.0, 1.0]))
    # 1 - 1/3 = 2/3; 1 - 2/4 = 0.5; zero-norm group -> 0
    torch.testing.assert_close(got, torch.tensor([2.0 / 3.0, 0.5, 0.0]))


def test_group_shrink_factors_threshold_at_or_above_the_norm_gives_exactly_zero() -> None:
    sq = torch.tensor([9.0, 16.0, 25.0])  # norms 3, 4, 5
    got = group_shrink_factors(sq, torch.tensor([3.0, 8.0, 0.0]))
    # t = norm -> 1 - 3/3 = 0; t > norm -> max(0, 1 - 8/4 = -1) = 0; t = 0 -> 1
    assert torch.equal(got, torch.tensor([0.0, 0.0, 1.0]))


def test_group_shrink_factors_zero_norm_is_finite_and_zero() -> None:
    got = group_shrink_factors(torch.zeros(3), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(got, torch.zeros(3))  # no 0/0 = NaN


def test_group_shrink_applied_to_weight_groups() -> None:
    groups = [
        torch.tensor([3.0, 4.0]),  # norm 5
        torch.tensor([0.0, -6.0, 8.0]),  # norm 10
        torch.tensor([1.0, 0.0]),  # norm 1
    ]
    sq = sq_norms_of(groups)
    assert sq.tolist() == [25.0, 100.0, 1.0]
    factors = group_shrink_factors(sq, torch.tensor([2.0, 5.0, 1.0]))
    # 1 - 2/5 = 0.6; 1 - 5/10 = 0.5; 1 - 1/1 = 0
    torch.testing.assert_close(factors, torch.tensor([0.6, 0.5, 0.0]))
    shrunk = apply_factors(groups, factors)
    # [3, 4] * 0.6 = [1.8, 2.4] (norm 3 = 5 - 2); [0, -6, 8] * 0.5 = [0, -3, 4] (norm 5 = 10 - 5)
    torch.testing.assert_close(shrunk[0], torch.tensor([1.8, 2.4]))
    torch.testing.assert_close(shrunk[1], torch.tensor([0.0, -3.0, 4.0]))
    assert torch.equal(shrunk[2], torch.zeros(2))  # exact zero, not merely small
    # each surviving group's norm went down by exactly its threshold
    assert float(shrunk[0].norm()) == pytest.approx(5.0 - 2.0)
    assert float(shrunk[1].norm()) == pytest.approx(10.0 - 5.0)


def test_group_shrink_is_the_proximal_map_of_the_group_norm() -> None:
    """prox_{t||.||}(v) minimizes 0.5 ||x - v||^2 + t ||x||: no nearby point does better."""
    torch.manual_seed(0)
    v = torch.tensor([1.0, -2.0, 2.0])  # norm 3
    t = 1.2
    x = v * group_shrink_factors(v.pow(2).sum().view(1), torch.tensor([t]))[0]
    # closed form: v * (1 - 1.2/3) = v * 0.6
    torch.testing.assert_close(x, torch.tensor([0.6, -1.2, 1.2]))

    def objective(z: torch.Tensor) -> float:
        return float(0.5 * (z - v).pow(2).sum() + t * z.norm())

    best = objective(x)
    for _ in range(200):
        assert objective(x + 0.05 * torch.randn(3)) >= best - 1e-6


# ---------------------------------------------------------------- top_k_factors
def test_top_k_factors_keeps_the_largest() -> None:
    sq = torch.tensor([1.0, 25.0, 4.0, 16.0, 9.0])
    # order of norms: 25 (idx 1) > 16 (idx 3) > 9 (idx 4) > 4 > 1
    assert top_k_factors(sq, 3).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert top_k_factors(sq, 1).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_top_k_factors_ties_go_to_the_lower_index() -> None:
    sq = torch.tensor([4.0, 9.0, 4.0, 4.0, 9.0])
    # k=1: the two 9s tie -> index 1 (lower) wins
    assert top_k_factors(sq, 1).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    # k=3: both 9s, then the first 4 (index 0) of the three tied 4s
    assert top_k_factors(sq, 3).tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    # k=4: indices 0 and 2 of the 4s
    assert top_k_factors(sq, 4).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_top_k_factors_all_equal_ties_go_to_lower_indices() -> None:
    assert top_k_factors(torch.zeros(4), 2).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_top_k_factors_k_zero_and_k_len() -> None:
    sq = torch.tensor([3.0, 1.0, 2.0])
    assert torch.equal(top_k_factors(sq, 0), torch.zeros(3))
    assert torch.equal(top_k_factors(sq, 3), torch.ones(3))


def test_top_k_applied_to_weight_groups_is_the_l20_projection() -> None:
    groups = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 3.0]), torch.tensor([2.0, 0.5])]
    sq = sq_norms_of(groups)  # 2, 9, 4.25
    kept = apply_factors(groups, top_k_factors(sq, 2))
    assert torch.equal(kept[0], torch.zeros(2))  # smallest norm sqrt(2) dropped
    assert torch.equal(kept[1], groups[1]) and torch.equal(kept[2], groups[2])  # untouched
    # the projection's distance is the dropped group's norm: sqrt(2)
    pairs = zip(kept, groups, strict=True)
    distance = math.sqrt(sum(float((a - b).pow(2).sum()) for a, b in pairs))
    assert distance == pytest.approx(math.sqrt(2.0))


def test_top_k_factors_dtype_and_shape_follow_the_input() -> None:
    sq = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = top_k_factors(sq, 1)
    assert out.dtype == torch.float64 and out.shape == (2,)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (-1, r"k must be an integer in \[0, 3\], got -1"),
        (4, r"k must be an integer in \[0, 3\], got 4"),
        (1.0, r"k must be an integer in \[0, 3\], got 1\.0"),
        (True, r"k must be an integer in \[0, 3\], got True"),
        ("2", r"k must be an integer in \[0, 3\], got '2'"),
    ],
)
def test_top_k_factors_bad_k(k: object, message: str) -> None:
    sq = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=message):
        top_k_factors(sq, k)  # type: ignore[arg-type]
    assert torch.equal(sq, torch.tensor([1.0, 2.0, 3.0]))
