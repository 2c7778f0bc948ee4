"""Configurations of several planners as candidates: names, simplicity order, ties."""

import numpy as np
import pytest

from toolkit.core.plans import PLANNER_NAMES, configuration_name, split_configuration_name
from toolkit.evaluation.candidates import Candidate, build_candidates, configuration_rank, pick_best
from toolkit.planning.planners import PLANNERS


def test_the_planner_names_are_the_planners():
    assert PLANNER_NAMES == tuple(PLANNERS)


@pytest.mark.parametrize("planner", PLANNER_NAMES)
@pytest.mark.parametrize("base", ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "custom"])
def test_names_split_back_into_configuration_and_planner(base, planner):
    assert split_configuration_name(configuration_name(base, planner)) == (base, planner)


def test_other_planners_come_after_the_default_cheapest_network_first():
    names = ["3d_fullres-resenc-l", "3d_lowres-resenc-m", "2d", "2d-resenc-m", "3d_fullres"]
    assert sorted(names, key=configuration_rank) == [
        "2d",
        "3d_fullres",
        "2d-resenc-m",
        "3d_lowres-resenc-m",
        "3d_fullres-resenc-l",
    ]
    assert Candidate(("3d_fullres-resenc-l", "3d_fullres")).name == "3d_fullres+3d_fullres-resenc-l"


def test_a_tie_goes_to_the_plain_network():
    candidates = build_candidates(
        ["3d_fullres-resenc-l", "3d_fullres"], ["3d_fullres-resenc-l", "3d_fullres"]
    )
    assert [c.name for c in candidates] == [
        "3d_fullres",
        "3d_fullres-resenc-l",
        "3d_fullres+3d_fullres-resenc-l",
    ]
    assert pick_best(np.array([0.9000, 0.9004, 0.9003])) == 0
    assert pick_best(np.array([0.9000, 0.9010, 0.9003])) == 1
