"""Metrics, postprocessing and ensembles of region models, and the ignore label's masking."""

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.core.labels import label_model
from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.evaluation.metrics import case_metrics
from toolkit.evaluation.postprocessing import (
    choose_postprocessing,
    class_counts,
    variant_counts,
    variant_dice,
)
from toolkit.evaluation.predictions import ensemble_argmax
from toolkit.inference.ensemble import ensemble_folders, save_probabilities
from toolkit.io.images import Geometry

BRATS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
REGIONS = label_model(BRATS, [1, 2, 3])


def test_region_metrics_measure_the_union_of_the_region_values():
    reference = np.zeros((1, 4, 8), dtype=np.uint8)
    reference[0, :, :4] = [1, 1, 2, 3]  # columns 0-3 of each row: the values 1, 1, 2, 3
    prediction = np.zeros_like(reference)
    prediction[0, :, 1:4] = [1, 3, 3]
    by_key = {m.label: m for m in case_metrics(reference, prediction, REGIONS.regions, (1, 1, 1))}
    whole, core, enhancing = by_key[1], by_key[2], by_key[3]
    assert (whole.tp, whole.fp, whole.fn) == (12, 0, 4)  # whole = any of 1, 2, 3
    assert (core.tp, core.fp, core.fn) == (8, 0, 0)  # core = 2 or 3: predicted 3 on the 2s
    assert (enhancing.tp, enhancing.fp, enhancing.fn) == (4, 4, 0)
    assert whole.dice == pytest.approx(24 / 28) and core.dice == 1.0


def test_ignored_voxels_count_in_no_metric():
    reference = np.asarray([[[0, 1, 1, 3, 3, 3]]], dtype=np.uint8)
    prediction = np.asarray([[[0, 1, 1, 1, 1, 0]]], dtype=np.uint8)
    (m,) = case_metrics(reference, prediction, [1], (1, 1, 1), ignore=3)
    assert (m.tp, m.fp, m.fn, m.dice) == (2, 0, 0, 1.0)
    (plain,) = case_metrics(reference, prediction, [1], (1, 1, 1))
    assert plain.fp == 2  # without the ignore label those voxels would be false positives
    counts = class_counts(reference, prediction, [1], ignore=3)
    assert counts.tolist() == [[2, 0, 0]]


def test_postprocessing_per_region_keeps_each_regions_largest_component():
    seg = np.zeros((1, 1, 12), dtype=np.uint8)
    seg[0, 0, :4] = [1, 2, 3, 2]  # one tumour
    seg[0, 0, 6:8] = [1, 1]  # a stray bit of whole tumour
    seg[0, 0, 10] = 3  # a stray enhancing voxel
    out = apply_postprocessing(seg, Postprocessing(largest_component_regions=[[2, 3]]))
    assert out[0, 0].tolist() == [1, 2, 3, 2, 0, 0, 1, 1, 0, 0, 0, 0]
    assert (
        Postprocessing.from_dict(out_dict := {"largest_component_regions": [[2, 3]]}).to_dict()[
            "largest_component_regions"
        ]
        == out_dict["largest_component_regions"]
    )


def test_postprocessing_choice_for_regions_names_regions_by_their_values():
    reference = np.zeros((1, 1, 12), dtype=np.uint8)
    reference[0, 0, :4] = [1, 2, 3, 2]
    prediction = reference.copy()
    prediction[0, 0, 10] = 3  # a stray enhancing voxel: removing it helps core and enhancing
    counts = variant_counts(reference, prediction, REGIONS.regions, REGIONS)[None]
    choice = choose_postprocessing(variant_dice(counts), [1, 2, 3], REGIONS.names, REGIONS)
    assert choice.postprocessing.largest_component_foreground
    assert "region 1 (whole)" in choice.steps[1].description


def _geometry(shape):
    return Geometry(
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
        size=tuple(reversed(shape)),
    )


def test_region_ensembles_average_then_threshold(tmp_path):
    rng = np.random.default_rng(0)
    shape = (2, 3, 4)
    members = [rng.random((3, *shape)).astype(np.float32) for _ in range(2)]
    folders = []
    for i, member in enumerate(members):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        save_probabilities(folder / "case.npz", member, _geometry(shape), (1, 2, 3))
        folders.append(folder)
    ensemble_folders(folders, tmp_path / "out", quiet=True)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    mean = (members[0].astype(np.float16).astype(np.float32) + members[1].astype(np.float16)) / 2
    expected = np.zeros(shape, dtype=np.uint8)
    for channel, value in zip(mean, (1, 2, 3), strict=True):
        expected[channel > 0.5] = value
    assert np.array_equal(got, expected)
    assert np.array_equal(
        ensemble_argmax([m.astype(np.float16) for m in members], REGIONS), expected
    )


def test_class_and_region_probabilities_do_not_mix_in_an_ensemble(tmp_path):
    from toolkit.errors import ToolkitError

    shape = (1, 2, 2)
    for name, regions in (("a", (1, 2, 3)), ("b", None)):
        (tmp_path / name).mkdir()
        save_probabilities(
            tmp_path / name / "case.npz",
            np.zeros((3, *shape), np.float32),
            _geometry(shape),
            regions,
        )
    with pytest.raises(ToolkitError, match="regions"):
        ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", quiet=True)
