"""toolkit.verify.stage: every rule, one problem per broken file, and the cache."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import replace_array, rewrite

from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.nifti_scan import NiftiScan, scan
from toolkit.verify.report import Severity
from toolkit.verify.stage import require_valid, verify_dataset
from toolkit.workspace import DatasetPaths, channel_file, label_file

CASE = "synthmr_002"


def image_path(paths, channel=0, case=CASE):
    return paths.images_tr / channel_file(case, channel)


def label_path(paths, case=CASE):
    return paths.labels_tr / label_file(case)


def only_error(report):
    assert len(report.errors) == 1, [p.line() for p in report.problems]
    return report.errors[0]


def test_good_dataset_has_no_problems_and_is_cached(raw_copy):
    report = verify_dataset(raw_copy)
    assert report.ok and report.problems == []
    assert (report.training_cases, report.test_cases, report.cases_read) == (3, 1, 4)
    assert raw_copy.verify_cache.is_file()
    mtime = raw_copy.verify_cache.stat().st_mtime_ns
    again = verify_dataset(raw_copy)
    assert again.ok and again.cases_read == 0  # nothing read a second time
    assert raw_copy.verify_cache.stat().st_mtime_ns == mtime  # and nothing written
    assert verify_dataset(raw_copy, use_cache=False).cases_read == 4


def _spacing(image):
    image.SetSpacing((0.8, 0.8, 2.0))
    return image


def _origin(image):
    image.SetOrigin(tuple(v + 5.0 for v in image.GetOrigin()))
    return image


def _direction(image):
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.mark.parametrize(
    "change, phrase",
    [
        (_spacing, "spacing"),
        (_origin, "origin"),
        (_direction, "direction differs"),
        (lambda image: image[:-1, :, :], "shape"),
    ],
)
def test_label_geometry_must_match_its_image(raw_copy, change, phrase):
    rewrite(label_path(raw_copy), change)
    problem = only_error(verify_dataset(raw_copy))
    assert problem.case == CASE and problem.file == label_path(raw_copy)
    assert phrase in problem.message and channel_file(CASE, 0) in problem.message


def test_spacing_within_tolerance_is_fine(raw_copy):
    rewrite(
        label_path(raw_copy),
        lambda im: (im.SetSpacing(tuple(s * (1 + 2e-5) for s in im.GetSpacing())), im)[1],
    )
    assert verify_dataset(raw_copy).ok


def test_second_channel_geometry_must_match(raw_copy):
    rewrite(image_path(raw_copy, 1), _spacing)
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == image_path(raw_copy, 1) and "spacing" in problem.message


def test_undeclared_label_value(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == label_path(raw_copy)
    assert "7 not declared" in problem.message and "declared: 0, 1, 2" in problem.message


def test_label_that_is_not_whole(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 1.5, a).astype(np.float32))
    assert "not whole numbers" in only_error(verify_dataset(raw_copy)).message


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_image(raw_copy, cut):
    path = image_path(raw_copy)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == path and "truncated" in problem.message


def test_uncompressed_truncated_image(raw_copy):
    # the converted layout holds .nii.gz; the .nii check serves files of other datasets
    nii = raw_copy.root / "plain.nii"
    sitk.WriteImage(sitk.ReadImage(str(image_path(raw_copy))), str(nii), useCompression=False)
    assert scan(nii) == NiftiScan()
    nii.write_bytes(nii.read_bytes()[:-100])
    assert "truncated" in scan(nii).problem


def test_garbage_file_is_unreadable(raw_copy):
    image_path(raw_copy).write_bytes(b"this is not a nifti file")
    assert "unreadable" in only_error(verify_dataset(raw_copy)).message


def test_nan_in_image(raw_copy):
    replace_array(
        image_path(raw_copy, 1),
        lambda a: np.where(np.arange(a.size).reshape(a.shape) < 3, np.nan, a),
    )
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == image_path(raw_copy, 1) and "3 NaN or inf" in problem.message


def test_missing_channel_and_missing_label(raw_copy):
    image_path(raw_copy, 1).unlink()
    label_path(raw_copy, "synthmr_003").unlink()
    report = verify_dataset(raw_copy)
    lines = {(p.case, p.file.name, p.message) for p in report.errors}
    assert (CASE, channel_file(CASE, 1), "missing (channel 1)") in lines
    assert ("synthmr_003", label_file("synthmr_003"), "missing") in lines


def test_extra_channel_file_breaks_the_channel_count(raw_copy):
    extra = image_path(raw_copy, 2)
    extra.write_bytes(image_path(raw_copy, 1).read_bytes())
    problem = only_error(verify_dataset(raw_copy))
    assert (
        problem.file == extra
        and "beyond those in dataset.json's channel_names (2: T2, ADC)" in problem.message
    )


def test_num_training_must_match(raw_copy):
    meta = json.loads(raw_copy.dataset_json.read_text())
    meta["numTraining"] = 5
    raw_copy.dataset_json.write_text(json.dumps(meta))
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == raw_copy.dataset_json and "numTraining is 5 but 3" in problem.message


def test_broken_dataset_json_is_one_problem(raw_copy):
    raw_copy.dataset_json.write_text("{ not json")
    problem = only_error(verify_dataset(raw_copy))
    assert problem.file == raw_copy.dataset_json and "JSON" in problem.message


def test_case_without_foreground_is_a_warning(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.zeros_like(a))
    report = verify_dataset(raw_copy)
    assert report.ok and len(report.warnings) == 1
    warning = report.warnings[0]
    assert (
        warning.severity is Severity.WARNING
        and warning.case == CASE
        and "no foreground" in warning.message
    )
    cached = verify_dataset(raw_copy)
    assert (
        cached.cases_read == 0 and cached.problems == report.problems
    )  # warnings come back from the cache


def test_stray_files_are_warnings(raw_copy):
    (raw_copy.images_tr / "notes.txt").write_text("hello")
    (raw_copy.images_tr / "._junk_0000.nii.gz").write_bytes(b"junk")  # hidden: ignored silently
    report = verify_dataset(raw_copy)
    assert report.ok and [w.file.name for w in report.warnings] == ["notes.txt"]


def test_mixed_dimensions_are_an_error(raw_copy):
    for channel in (0, 1):
        rewrite(image_path(raw_copy, channel), lambda im: im[:, :, 0])
    rewrite(label_path(raw_copy), lambda im: im[:, :, 0])
    problem = only_error(verify_dataset(raw_copy))
    assert problem.case == CASE and "is 2D while the other cases are 3D" in problem.message


def test_a_changed_file_is_read_again(raw_copy):
    assert verify_dataset(raw_copy).ok
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 9, a).astype(np.uint8))
    report = verify_dataset(raw_copy)
    assert report.cases_read == 1 and not report.ok


def test_broken_cases_are_not_cached(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 9, a).astype(np.uint8))
    stat = label_path(raw_copy).stat()
    assert not verify_dataset(raw_copy).ok
    os.utime(label_path(raw_copy), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    report = verify_dataset(raw_copy)
    assert report.cases_read == 1 and not report.ok


def test_one_line_per_problem_names_case_and_file(raw_copy):
    rewrite(label_path(raw_copy, "synthmr_001"), _spacing)
    replace_array(
        label_path(raw_copy, "synthmr_002"), lambda a: np.where(a == 2, 7, a).astype(np.uint8)
    )
    report = verify_dataset(raw_copy)
    lines = [p.line() for p in report.errors]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith(
        f"error: case synthmr_001: {label_path(raw_copy, 'synthmr_001')}: spacing"
    )
    assert report.broken_cases == ["synthmr_001", "synthmr_002"]


def test_require_valid(raw_copy, tmp_path):
    assert require_valid(raw_copy).ok
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    with pytest.raises(ToolkitError, match="1 error in 1 case") as err:
        require_valid(raw_copy)
    assert f"toolkit verify {raw_copy.name}" in str(err.value) and CASE in str(err.value)
    with pytest.raises(MissingStageError, match="toolkit convert"):
        require_valid(DatasetPaths(tmp_path / "Nothing"))


def test_verify_in_parallel_finds_the_same(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, 7, a).astype(np.uint8))
    serial = verify_dataset(raw_copy, workers=1, use_cache=False)
    parallel = verify_dataset(raw_copy, workers=2, use_cache=False)
    assert serial.problems == parallel.problems and len(serial.errors) == 1


@pytest.mark.parametrize("dtype, ending", [(np.float32, ".nii.gz"), (np.float64, ".nii")])
def test_scan_counts_values_simpleitk_reads_as_zero(tmp_path, dtype, ending):
    array = np.zeros((3, 40, 50), dtype)
    array[0, 0, :2] = np.nan
    array[2, 39, 49] = -np.inf
    path = tmp_path / f"x{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert np.isfinite(
        sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    ).all()  # why the scan exists
    assert scan(path) == NiftiScan(nonfinite=3)


def test_nan_in_a_float_label(raw_copy):
    replace_array(label_path(raw_copy), lambda a: np.where(a == 2, np.nan, a).astype(np.float32))
    assert "NaN or inf" in only_error(verify_dataset(raw_copy)).message
