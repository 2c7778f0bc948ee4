"""Bootstrap over virtual validation sets: how sure are we of each candidate's score?

The cross-validation cases are resampled with replacement ``samples`` times (default 1000,
as in the method's robustness analysis), seeded. There is ONE draw of case indices, shared
by every candidate, so comparisons are paired: in each virtual validation set all
candidates are scored on exactly the same cases, and a difference between two candidates
is not blurred by which cases happened to be drawn.

The statistic is the *mean foreground Dice*: for each foreground class the mean Dice over
the cases where it is defined (see :mod:`toolkit.evaluation.metrics`), then the mean over
the classes. Intervals are percentile intervals (the ``percentile`` method of
``scipy.stats.bootstrap``): the 2.5th and 97.5th percentiles of the statistic over the
virtual sets for 95% confidence.

For each candidate: the point estimate on all cases, its interval, per-class intervals, how
often it wins a virtual set under the selection rule (*rank-first frequency*; ties within
the tolerance go to the simpler candidate, exactly as in selection), and the paired
difference of the chosen candidate minus it, with its interval and the fraction of virtual
sets in which the chosen candidate scores higher.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from toolkit.core.constants import BOOTSTRAP_SAMPLES as DEFAULT_SAMPLES
from toolkit.core.constants import BOOTSTRAP_SEED as DEFAULT_SEED
from toolkit.core.constants import CONFIDENCE as DEFAULT_CONFIDENCE
from toolkit.core.selection import Interval
from toolkit.evaluation.candidates import TIE_TOLERANCE, pick_best
from toolkit.io.json_files import float_or_nan


@dataclass
class CandidateBootstrap:
    """What the bootstrap says about one candidate."""

    name: str
    mean_dice: float  # on all cases
    interval: Interval
    class_mean_dice: dict[int, float]
    class_intervals: dict[int, Interval]
    rank_first_frequency: float  # fraction of virtual sets this candidate wins
    difference_to_chosen: float  # chosen minus this candidate, on all cases (0 for the chosen)
    difference_interval: Interval
    chosen_better_fraction: float  # fraction of virtual sets where the chosen one scores higher

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mean_dice": self.mean_dice,
            "interval": self.interval.to_list(),
            "class_mean_dice": {str(k): v for k, v in self.class_mean_dice.items()},
            "class_intervals": {str(k): v.to_list() for k, v in self.class_intervals.items()},
            "rank_first_frequency": self.rank_first_frequency,
            "difference_to_chosen": self.difference_to_chosen,
            "difference_interval": self.difference_interval.to_list(),
            "chosen_better_fraction": self.chosen_better_fraction,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CandidateBootstrap:
        return cls(
            name=str(data["name"]),
            mean_dice=float_or_nan(data["mean_dice"]),
            interval=Interval.from_list(data["interval"]),
            class_mean_dice={int(k): float_or_nan(v) for k, v in data["class_mean_dice"].items()},
            class_intervals={
                int(k): Interval.from_list(v) for k, v in data["class_intervals"].items()
            },
            rank_first_frequency=float(data["rank_first_frequency"]),
            difference_to_chosen=float_or_nan(data["difference_to_chosen"]),
            difference_interval=Interval.from_list(data["difference_interval"]),
            chosen_better_fraction=float(data["chosen_better_fraction"]),
        )


@dataclass
class BootstrapResult:
    """``bootstrap.json``: candidates in simplicity order."""

    samples: int
    seed: int
    confidence: float
    tie_tolerance: float
    num_cases: int
    chosen: str
    candidates: list[CandidateBootstrap] = field(default_factory=list)

    def candidate(self, name: str) -> CandidateBootstrap:
        return {c.name: c for c in self.candidates}[name]  # names are unique

    def to_dict(self) -> dict:
        return {
            "statistic": "mean foreground Dice (per-class mean over cases where defined, then mean over classes)",
            "method": "percentile bootstrap, one shared draw of case indices for all candidates (paired)",
            "samples": self.samples,
            "seed": self.seed,
            "confidence": self.confidence,
            "tie_tolerance": self.tie_tolerance,
            "num_cases": self.num_cases,
            "chosen": self.chosen,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: dict) -> BootstrapResult:
        return cls(
            samples=int(data["samples"]),
            seed=int(data["seed"]),
            confidence=float(data["confidence"]),
            tie_tolerance=float(data["tie_tolerance"]),
            num_cases=int(data["num_cases"]),
            chosen=str(data["chosen"]),
            candidates=[CandidateBootstrap.from_dict(c) for c in data["candidates"]],
        )


@dataclass
class BootstrapDraws:
    """The raw distributions behind a :class:`BootstrapResult` (for plots)."""

    names: list[str]
    mean_dice: np.ndarray  # (samples, candidates)
    class_mean_dice: np.ndarray  # (samples, candidates, classes)
    winners: np.ndarray  # (samples,) index into names
    chosen: int

    def differences(self) -> np.ndarray:
        """(samples, candidates): chosen minus each candidate, per virtual set."""
        return self.mean_dice[:, [self.chosen]] - self.mean_dice


def draw_case_indices(
    num_cases: int, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """(samples, num_cases) indices drawn with replacement; depends only on its arguments."""
    if num_cases < 1:
        raise ValueError("the bootstrap needs at least one case")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    return np.random.default_rng(seed).integers(0, num_cases, size=(samples, num_cases))


def case_weights(indices: np.ndarray, num_cases: int) -> np.ndarray:
    """How often each case appears in each virtual set: (samples, num_cases)."""
    samples = indices.shape[0]
    flat = (np.arange(samples)[:, None] * num_cases + indices).ravel()
    return (
        np.bincount(flat, minlength=samples * num_cases)
        .reshape(samples, num_cases)
        .astype(np.float64)
    )


def class_means(dice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted per-class means ignoring NaN.

    ``dice``: (..., cases, classes) with NaN for undefined; ``weights``: (samples, cases).
    Returns (samples, ..., classes); NaN where a class is undefined in every drawn case.
    """
    defined = ~np.isnan(dice)
    values = np.where(defined, dice, 0.0)
    sums = np.einsum("sn,...nk->s...k", weights, values)
    counts = np.einsum("sn,...nk->s...k", weights, defined.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), np.nan)


def nanmean_last(values: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(values, axis=-1)


def mean_foreground_dice(dice: np.ndarray) -> float:
    """The statistic on all cases: ``dice`` is (cases, classes) with NaN for undefined."""
    return float(nanmean_last(class_means(dice, np.ones((1, dice.shape[0])))[0]))


def percentile_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return Interval(float(low), float(high))


def bootstrap_candidates(
    names: list[str],
    dice: np.ndarray,
    labels: list[int],
    samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    tie_tolerance: float = TIE_TOLERANCE,
) -> tuple[BootstrapResult, BootstrapDraws]:
    """Bootstrap every candidate on the same virtual validation sets.

    ``names`` are in simplicity order; ``dice`` is (candidates, cases, classes) with the
    cases in the same order for every candidate and NaN for undefined; ``labels`` are the
    foreground label values of the class axis.
    """
    dice = np.asarray(dice, dtype=np.float64)
    num_candidates, num_cases, num_classes = dice.shape
    if num_candidates != len(names) or num_classes != len(labels):
        raise ValueError(
            f"dice of shape {dice.shape} does not match {len(names)} candidates and {len(labels)} classes"
        )
    weights = case_weights(draw_case_indices(num_cases, samples, seed), num_cases)
    per_class = class_means(dice, weights)  # (samples, candidates, classes)
    per_set = nanmean_last(per_class)  # (samples, candidates)
    point_class = class_means(dice, np.ones((1, num_cases)))[0]  # (candidates, classes)
    point = nanmean_last(point_class)
    chosen = pick_best(point, tie_tolerance)
    winners = pick_best(per_set, tie_tolerance)
    wins = np.bincount(winners, minlength=num_candidates) / samples
    differences = per_set[:, [chosen]] - per_set
    results = []
    for i, name in enumerate(names):
        results.append(
            CandidateBootstrap(
                name=name,
                mean_dice=float(point[i]),
                interval=percentile_interval(per_set[:, i], confidence),
                class_mean_dice={label: float(point_class[i, k]) for k, label in enumerate(labels)},
                class_intervals={
                    label: percentile_interval(per_class[:, i, k], confidence)
                    for k, label in enumerate(labels)
                },
                rank_first_frequency=float(wins[i]),
                difference_to_chosen=float(point[chosen] - point[i]),
                difference_interval=percentile_interval(differences[:, i], confidence),
                chosen_better_fraction=float(np.mean(differences[:, i] > 0)),
            )
        )
    result = BootstrapResult(
        samples=samples,
        seed=seed,
        confidence=confidence,
        tie_tolerance=tie_tolerance,
        num_cases=num_cases,
        chosen=names[chosen],
        candidates=results,
    )
    return result, BootstrapDraws(list(names), per_set, per_class, winners, chosen)
