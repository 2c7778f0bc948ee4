import numpy as np
import pytest

from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.errors import ToolkitError


def _seg():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[1:5, 1:5, 1:5] = 1  # big class-1 blob, 64 voxels
    seg[1:5, 1:5, 5:6] = 2  # class 2 touching it
    seg[8, 8, 8] = 1  # spurious single voxel of class 1
    seg[8, 1, 1] = 2  # spurious class-2 voxel
    return seg


def test_identity_changes_nothing():
    seg = _seg()
    assert np.array_equal(apply_postprocessing(seg, Postprocessing()), seg)


def test_foreground_component_removes_exactly_the_smaller_components():
    seg = _seg()
    out = apply_postprocessing(seg, Postprocessing(largest_component_foreground=True))
    expected = seg.copy()
    expected[8, 8, 8] = 0
    expected[8, 1, 1] = 0
    assert np.array_equal(out, expected)


def test_per_class_component():
    seg = _seg()
    out = apply_postprocessing(seg, Postprocessing(largest_component_classes=[2]))
    expected = seg.copy()
    expected[8, 1, 1] = 0
    assert np.array_equal(out, expected)


def test_json_round_trip_and_validation(tmp_path):
    pp = Postprocessing(True, [2, 1])
    pp.save(tmp_path / "pp.json")
    assert Postprocessing.load(tmp_path / "pp.json") == Postprocessing(True, [1, 2])
    with pytest.raises(ToolkitError, match="unknown postprocessing keys"):
        Postprocessing.from_dict({"keep": True})
    with pytest.raises(ToolkitError, match="positive label"):
        Postprocessing.from_dict({"largest_component_classes": [0]})
