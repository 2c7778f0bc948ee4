"""Candidates for model selection and the rule that picks one.

A candidate is one trained configuration or a pairwise ensemble of two (their probabilities
averaged, then the argmax). Candidates are always kept in *simplicity order*: single
configurations before ensembles; among configurations by cost, ``2d`` < ``3d_fullres`` <
``3d_lowres`` < ``3d_cascade_fullres`` (the cascade needs the low-res model first, so it
costs most), then any other configuration name alphabetically; ensembles by their members.
Configurations of another planner ("3d_fullres-resenc-l") come after the default planner's,
the planners from the cheapest network up (``PLANNER_NAMES``), each in the order above.

The selection rule: the best mean foreground Dice wins; every candidate within
``tie_tolerance`` (default 0.0005) of the best counts as tied, and the tie goes to the
simplest of them. The same rule picks the winner of each bootstrap draw.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from toolkit.core.constants import TIE_TOLERANCE
from toolkit.core.plans import PLANNER_NAMES, split_configuration_name
from toolkit.errors import ToolkitError

CONFIGURATION_COST_ORDER = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
ENSEMBLE_SEPARATOR = "+"


def configuration_rank(name: str) -> tuple[int, int, str]:
    base, planner = split_configuration_name(name)
    if base in CONFIGURATION_COST_ORDER:
        return (PLANNER_NAMES.index(planner), CONFIGURATION_COST_ORDER.index(base), "")
    return (PLANNER_NAMES.index(planner), len(CONFIGURATION_COST_ORDER), base)


@dataclass(frozen=True)
class Candidate:
    """One configuration, or an ensemble of two (names in simplicity order)."""

    configurations: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.configurations) not in (1, 2) or len(set(self.configurations)) != len(
            self.configurations
        ):
            raise ValueError(
                f"a candidate is one configuration or two different ones, not {self.configurations}"
            )
        ordered = tuple(sorted(self.configurations, key=configuration_rank))
        object.__setattr__(self, "configurations", ordered)

    @property
    def name(self) -> str:
        return ENSEMBLE_SEPARATOR.join(self.configurations)

    @property
    def is_ensemble(self) -> bool:
        return len(self.configurations) > 1

    def simplicity_key(self) -> tuple:
        return (len(self.configurations), tuple(configuration_rank(c) for c in self.configurations))

    @classmethod
    def parse(cls, name: str) -> Candidate:
        parts = tuple(p for p in name.split(ENSEMBLE_SEPARATOR) if p)
        try:
            return cls(parts)
        except ValueError as exc:
            raise ToolkitError(f"{name!r} is not a candidate name ({exc})") from None


def sort_by_simplicity(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=Candidate.simplicity_key)


def build_candidates(single: list[str], ensemble_members: list[str]) -> list[Candidate]:
    """Every configuration in ``single`` plus every pair of ``ensemble_members``, simplest first."""
    candidates = [Candidate((c,)) for c in single]
    members = sorted(set(ensemble_members), key=configuration_rank)
    candidates += [Candidate(pair) for pair in itertools.combinations(members, 2)]
    return sort_by_simplicity(candidates)


def pick_best(scores: np.ndarray, tie_tolerance: float = TIE_TOLERANCE) -> np.ndarray | int:
    """Index of the winner along the last axis of ``scores`` (columns in simplicity order).

    The winner is the first (simplest) column whose score is within ``tie_tolerance`` of the
    row's best. NaN scores never win. Works on one row (returns an int) or many (an array).
    """
    scores = np.asarray(scores, dtype=np.float64)
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = filled.max(axis=-1, keepdims=True)
    eligible = filled >= best - tie_tolerance - 1e-12  # "within" includes the boundary
    winner = np.argmax(eligible, axis=-1)
    return int(winner) if np.ndim(winner) == 0 else winner
