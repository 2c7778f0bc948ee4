import math

import numpy as np
import pytest
from scipy import stats

from toolkit.evaluation.bootstrap import (
    BootstrapResult,
    bootstrap_candidates,
    case_weights,
    draw_case_indices,
    mean_foreground_dice,
    percentile_interval,
)


def _scipy_interval(data, statistic, n_resamples, seed, paired=False):
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        method="percentile",
        confidence_level=0.95,
        paired=paired,
        vectorized=False,
        rng=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def test_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(7)
    dice = np.clip(rng.normal(0.8, 0.08, size=40), 0, 1)
    low, high = _scipy_interval((dice,), np.mean, 20000, 1)
    se = dice.std(ddof=1) / math.sqrt(dice.size)
    result, _ = bootstrap_candidates(["a"], dice[None, :, None], [1], samples=1000, seed=3)
    # Monte-Carlo error of a 2.5% quantile from 1000 draws is about 0.085 standard errors
    assert result.candidates[0].interval.low == pytest.approx(low, abs=0.35 * se)
    assert result.candidates[0].interval.high == pytest.approx(high, abs=0.35 * se)
    many, _ = bootstrap_candidates(["a"], dice[None, :, None], [1], samples=20000, seed=3)
    assert many.candidates[0].interval.low == pytest.approx(low, abs=0.1 * se)
    assert many.candidates[0].interval.high == pytest.approx(high, abs=0.1 * se)
    assert result.candidates[0].mean_dice == pytest.approx(dice.mean())


def test_two_classes_match_scipy_paired_bootstrap_of_the_class_mean():
    # the statistic is the mean over classes of the per-class means, cases resampled together
    rng = np.random.default_rng(8)
    a, b = rng.uniform(0.6, 1.0, 30), rng.uniform(0.2, 0.9, 30)
    low, high = _scipy_interval(
        (a, b), lambda x, y: (x.mean() + y.mean()) / 2, 20000, 2, paired=True
    )
    result, _ = bootstrap_candidates(
        ["c"], np.stack([a, b], axis=1)[None], [1, 2], samples=20000, seed=5
    )
    se = np.std((a + b) / 2, ddof=1) / math.sqrt(30)
    assert result.candidates[0].interval.low == pytest.approx(low, abs=0.1 * se)
    assert result.candidates[0].interval.high == pytest.approx(high, abs=0.1 * se)


def test_draws_are_paired_across_candidates():
    rng = np.random.default_rng(9)
    a = rng.uniform(0.5, 0.9, size=(25, 2))
    b = a + 0.01  # the same cases, each 0.01 better
    result, draws = bootstrap_candidates(
        ["a", "b"], np.stack([a, b]), [1, 2], samples=1000, seed=11
    )
    assert result.chosen == "b"
    other = result.candidate("a")
    # paired: every virtual set has the same cases for both, so the difference never varies
    assert other.difference_interval.low == pytest.approx(0.01, abs=1e-12)
    assert other.difference_interval.high == pytest.approx(0.01, abs=1e-12)
    assert other.chosen_better_fraction == 1.0
    assert result.candidate("b").rank_first_frequency == 1.0
    assert np.allclose(draws.mean_dice[:, 1] - draws.mean_dice[:, 0], 0.01)
    # unpaired draws would give a wide difference interval (the intervals themselves overlap)
    assert other.interval.high > result.candidate("b").interval.low


def test_one_draw_shared_whatever_the_candidates():
    rng = np.random.default_rng(10)
    a = rng.uniform(0.5, 0.9, size=(15, 1))
    alone, _ = bootstrap_candidates(["a"], a[None], [1], samples=500, seed=4)
    together, _ = bootstrap_candidates(["a", "z"], np.stack([a, a[::-1]]), [1], samples=500, seed=4)
    assert alone.candidates[0].interval == together.candidate("a").interval
    assert np.array_equal(draw_case_indices(15, 500, 4), draw_case_indices(15, 500, 4))
    assert not np.array_equal(draw_case_indices(15, 500, 4), draw_case_indices(15, 500, 5))


def test_rank_first_frequency_follows_the_tie_rule():
    rng = np.random.default_rng(12)
    a = rng.uniform(0.5, 0.9, size=(20, 1))
    # b is better by less than the tie tolerance: the simpler a wins every virtual set
    result, _ = bootstrap_candidates(
        ["a", "b"], np.stack([a, a + 0.0003]), [1], samples=300, seed=1
    )
    assert result.chosen == "a"
    assert result.candidate("a").rank_first_frequency == 1.0
    result, _ = bootstrap_candidates(
        ["a", "b"], np.stack([a, a + 0.0003]), [1], samples=300, seed=1, tie_tolerance=0.0
    )
    assert result.chosen == "b"
    # two candidates that trade places: frequencies add up to one and are both substantial
    c = a + rng.normal(0, 0.05, size=a.shape)
    c += a.mean() - c.mean()
    result, _ = bootstrap_candidates(["a", "c"], np.stack([a, c]), [1], samples=1000, seed=2)
    freq = [x.rank_first_frequency for x in result.candidates]
    assert sum(freq) == pytest.approx(1.0)
    assert min(freq) > 0.2


def test_undefined_cases_are_left_out_of_the_means():
    dice = np.array([[1.0, 0.5], [0.8, np.nan], [0.6, np.nan], [0.4, 0.7]])
    assert mean_foreground_dice(dice) == pytest.approx(
        (np.mean([1.0, 0.8, 0.6, 0.4]) + np.mean([0.5, 0.7])) / 2
    )
    result, draws = bootstrap_candidates(["a"], dice[None], [1, 2], samples=400, seed=0)
    assert result.candidates[0].class_mean_dice == {1: pytest.approx(0.7), 2: pytest.approx(0.6)}
    # a virtual set without a defined case of class 2 scores class 1 alone
    weights = case_weights(draw_case_indices(4, 400, 0), 4)
    only_undefined = (weights[:, 0] == 0) & (weights[:, 3] == 0)
    assert only_undefined.any()
    assert np.all(np.isnan(draws.class_mean_dice[only_undefined, 0, 1]))
    assert not np.any(np.isnan(draws.mean_dice))


def test_case_weights_count_draws():
    indices = np.array([[0, 0, 2], [1, 2, 2]])
    assert case_weights(indices, 3).tolist() == [[2, 0, 1], [0, 1, 2]]


def test_percentile_interval_and_round_trip():
    assert percentile_interval(np.arange(101.0)).low == pytest.approx(2.5)
    assert math.isnan(percentile_interval(np.array([np.nan])).low)
    rng = np.random.default_rng(1)
    result, _ = bootstrap_candidates(
        ["a", "b"], rng.uniform(size=(2, 6, 2)), [1, 3], samples=50, seed=1
    )
    assert BootstrapResult.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="does not match"):
        bootstrap_candidates(["a"], rng.uniform(size=(2, 6, 2)), [1, 3])
