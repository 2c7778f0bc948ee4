"""toolkit.convert.stage: MSD task folders and converted datasets into the workspace's raw/ layout."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import replace_array

from toolkit.convert.stage import convert_task, dataset_paths_for, default_dataset_name
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.workspace import DatasetPaths


def snapshot(folder):
    """Every file's content hash and modification time, to prove a folder was not touched."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = (
                hashlib.sha1(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    out["<folders>"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())
    return out


def first_axes(image, dim=3):
    full = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(full, full)[:dim, :dim].ravel()
    return image.GetSpacing()[:dim], image.GetOrigin()[:dim], tuple(direction)


def geometry(image):
    return image.GetSpacing(), image.GetOrigin(), image.GetDirection()


@pytest.mark.parametrize("kind", ["mr", "ct", "2d"])
def test_convert_each_synthetic_task(msd_tasks, tmp_path, kind):
    source = msd_tasks[kind]
    before = snapshot(source)
    paths = DatasetPaths(tmp_path / source.name)
    result = convert_task(source, paths, workers=1, quiet=True)
    assert result.converted and result.report is not None and result.report.ok, (
        result.report.problems
    )
    assert snapshot(source) == before  # the source is never modified

    meta = json.loads(paths.dataset_json.read_text())
    msd = json.loads((source / "dataset.json").read_text())
    assert meta["channel_names"] == msd["modality"]
    assert meta["labels"] == {name: int(value) for value, name in msd["labels"].items()}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["source"] == str(source.resolve())
    info = load_dataset_info(paths)

    # junk skipped: only CASE_NNNN files and CASE labels
    assert not any(
        p.name.startswith(".") for p in paths.raw.rglob("*") if p.name != ".verified.json"
    )
    cases = training_cases(paths, info)
    assert [c.case for c in cases] == [
        e["image"][len("./imagesTr/") : -len(".nii.gz")] for e in msd["training"]
    ]
    assert sorted(p.name for p in paths.images_ts.iterdir()) == [
        f"{t[len('./imagesTs/') : -len('.nii.gz')]}_{c:04d}.nii.gz"
        for t in msd["test"]
        for c in range(info.num_channels)
    ]

    dim = 2 if kind == "2d" else 3
    for case in cases:
        src_image = sitk.ReadImage(str(source / "imagesTr" / f"{case.case}.nii.gz"))
        src_label = sitk.ReadImage(str(source / "labelsTr" / f"{case.case}.nii.gz"))
        src_array = sitk.GetArrayFromImage(src_image)
        if src_image.GetDimension() == 3 + 1:
            channels = list(src_array)
        else:
            channels = [src_array]
        assert len(case.images) == len(channels) == info.num_channels
        for path, expected in zip(case.images, channels, strict=True):
            out = sitk.ReadImage(str(path))
            assert out.GetDimension() == dim
            assert geometry(out) == first_axes(src_image, dim)  # exactly, not approximately
            assert np.array_equal(sitk.GetArrayFromImage(out), expected)
        label = sitk.ReadImage(str(case.label))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert geometry(label) == geometry(src_label)
        assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(src_label))


def test_second_run_changes_nothing_and_force_reconverts(msd_tasks, tmp_path):
    paths = DatasetPaths(tmp_path / "D")
    convert_task(msd_tasks["2d"], paths, workers=1, quiet=True)
    before = snapshot(paths.root)
    again = convert_task(msd_tasks["2d"], paths, workers=1, quiet=True)
    assert not again.converted and again.report is None
    assert snapshot(paths.root) == before
    (paths.images_tr / "stale_0000.nii.gz").write_bytes(b"left over")
    forced = convert_task(msd_tasks["2d"], paths, workers=1, quiet=True, force=True)
    assert forced.converted and forced.report.ok
    assert not (paths.images_tr / "stale_0000.nii.gz").exists()  # a fresh folder, not an overlay
    assert sorted(p.name for p in paths.root.iterdir()) == ["raw"]  # no work folders left


def test_failed_reconvert_keeps_the_old_dataset(msd_tasks, msd_copy, tmp_path):
    paths = DatasetPaths(tmp_path / "D")
    convert_task(msd_tasks["2d"], paths, workers=1, quiet=True)
    before = snapshot(paths.raw)
    broken = msd_copy("2d")
    target = broken / "imagesTr" / "synth2d_002.nii.gz"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ToolkitError, match="could not be converted") as err:
        convert_task(broken, paths, workers=1, quiet=True, force=True)
    assert "truncated" in str(err.value) and "synth2d_002" in str(err.value)
    assert snapshot(paths.raw) == before
    assert sorted(p.name for p in paths.root.iterdir()) == ["raw"]


def test_work_folders_of_a_killed_convert_are_removed(msd_tasks, tmp_path):
    paths = DatasetPaths(tmp_path / "D")
    dead = paths.root / ".raw-partial-999999999"  # no such process
    (dead / "imagesTr").mkdir(parents=True)
    convert_task(msd_tasks["2d"], paths, workers=1, quiet=True)
    assert not dead.exists()


def test_converted_layout_is_accepted_as_source(converted_mr, tmp_path):
    paths = DatasetPaths(tmp_path / "Copy")
    result = convert_task(converted_mr.root, paths, workers=1, quiet=True)
    assert result.converted and result.report.ok
    assert json.loads(paths.dataset_json.read_text())["source_format"] == "nnunetv2"
    original = training_cases(converted_mr)
    copied = training_cases(paths)
    assert [c.case for c in copied] == [c.case for c in original]
    for a, b in zip(original, copied, strict=True):
        for x, y in zip([*a.images, a.label], [*b.images, b.label], strict=True):
            ix, iy = sitk.ReadImage(str(x)), sitk.ReadImage(str(y))
            assert geometry(ix) == geometry(iy)
            assert np.array_equal(sitk.GetArrayFromImage(ix), sitk.GetArrayFromImage(iy))


def test_float_label_that_is_not_whole_is_refused(msd_copy, tmp_path):
    source = msd_copy("mr")
    label = source / "labelsTr" / "synthmr_002.nii.gz"
    replace_array(label, lambda a: np.where(a == 1, np.float32(0.5), a))
    with pytest.raises(ToolkitError, match="not whole numbers") as err:
        convert_task(source, DatasetPaths(tmp_path / "D"), workers=1, quiet=True)
    assert "synthmr_002" in str(err.value)
    assert not (tmp_path / "D" / "raw").exists()


def test_wrong_channel_count_names_the_file(msd_copy, tmp_path):
    source = msd_copy("mr")
    meta = json.loads((source / "dataset.json").read_text())
    meta["modality"] = {"0": "T2", "1": "ADC", "2": "DWI"}
    (source / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        ToolkitError, match="2 channels along its fourth axis but dataset.json declares 3"
    ):
        convert_task(source, DatasetPaths(tmp_path / "D"), workers=1, quiet=True)


def test_labels_beyond_255_are_uint16(tmp_path):
    source = tmp_path / "Task99_Many"
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True)
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    label = sitk.GetImageFromArray(np.full((4, 5, 6), 300, np.int32))
    sitk.WriteImage(image, str(source / "imagesTr" / "a.nii.gz"))
    sitk.WriteImage(label, str(source / "labelsTr" / "a.nii.gz"))
    labels = {"0": "background", **{str(i): f"l{i}" for i in range(1, 301)}}
    meta = {
        "modality": {"0": "CT"},
        "labels": labels,
        "numTraining": 1,
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
        "test": [],
    }
    (source / "dataset.json").write_text(json.dumps(meta))
    paths = DatasetPaths(tmp_path / "ws" / "Task99_Many")
    result = convert_task(source, paths, workers=1, quiet=True)
    assert result.report.ok
    assert sitk.ReadImage(str(paths.labels_tr / "a.nii.gz")).GetPixelID() == sitk.sitkUInt16


def test_listed_path_outside_the_task_is_refused(msd_copy, tmp_path):
    source = msd_copy("2d")
    meta = json.loads((source / "dataset.json").read_text())
    meta["training"][0]["label"] = "../../etc/passwd"
    (source / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ToolkitError, match="has a '..' component"):
        convert_task(source, DatasetPaths(tmp_path / "D"), workers=1, quiet=True)


def test_source_inside_the_target_is_refused(converted_mr, tmp_path):
    paths = DatasetPaths(tmp_path / "D")
    shutil.copytree(converted_mr.root, paths.root)
    with pytest.raises(ToolkitError, match="inside the dataset folder"):
        convert_task(paths.raw, paths, workers=1, quiet=True, force=True)
    assert paths.dataset_json.is_file()


def test_workspace_inside_the_source_is_refused(msd_copy):
    source = msd_copy("2d")
    before = snapshot(source)
    with pytest.raises(ToolkitError, match="inside the source folder"):
        convert_task(source, DatasetPaths(source / "workspace" / "D"), workers=1, quiet=True)
    assert snapshot(source) == before


def test_parallel_workers_give_the_same_files(msd_tasks, tmp_path):
    one, two = DatasetPaths(tmp_path / "one"), DatasetPaths(tmp_path / "two")
    convert_task(msd_tasks["ct"], one, workers=1, quiet=True)
    convert_task(msd_tasks["ct"], two, workers=2, quiet=True)
    for a, b in zip(training_cases(one), training_cases(two), strict=True):
        assert np.array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(a.images[0]))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(b.images[0]))),
        )


def test_names(tmp_path, monkeypatch):
    assert default_dataset_name(tmp_path / "Task04_Hippocampus.tar") == "Task04_Hippocampus"
    assert default_dataset_name(tmp_path / "Task04_Hippocampus.tar.gz") == "Task04_Hippocampus"
    monkeypatch.setenv("TOOLKIT_WORKSPACE", str(tmp_path / "ws"))
    assert (
        dataset_paths_for(tmp_path / "Task04_Hippocampus", None, None).root
        == tmp_path / "ws" / "Task04_Hippocampus"
    )
    assert (
        dataset_paths_for(tmp_path / "T", "elsewhere", "Mine").root.as_posix() == "elsewhere/Mine"
    )
    with pytest.raises(ToolkitError, match="dataset name"):
        dataset_paths_for(tmp_path / "T", None, "../evil")
    assert os.environ["TOOLKIT_WORKSPACE"]


def test_nan_in_a_source_image_is_refused(msd_copy, tmp_path):
    source = msd_copy("ct")
    replace_array(
        source / "imagesTr" / "synthct_001.nii.gz",
        lambda a: np.where(a > 500, np.nan, a).astype(np.float32),
    )
    with pytest.raises(ToolkitError, match="NaN or inf"):
        convert_task(source, DatasetPaths(tmp_path / "D"), workers=1, quiet=True)
