"""dataset.json parsing and the case files of the converted layout."""

import json

import pytest

from toolkit.core.labels import foreground_labels
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.dataset_json import (
    DatasetInfo,
    load_dataset_info,
    parse_labels,
    read_dataset_info,
    test_cases,
    training_cases,
    write_dataset_info,
)
from toolkit.workspace import DatasetPaths


def _info(**overrides):
    data = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "edema": 1, "core": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    data.update(overrides)
    return data


def test_views_and_round_trip(tmp_path):
    info = DatasetInfo.from_json({**_info(), "source": "/data/Task01", "tensorImageSize": "4D"})
    assert info.channels == ["T2", "ADC"]
    assert info.num_channels == 2
    assert foreground_labels(info.label_values) == [1, 2]
    assert info.num_classes == 3
    assert info.label_names == {0: "background", 1: "edema", 2: "core"}
    path = tmp_path / "dataset.json"
    write_dataset_info(path, info)
    on_disk = json.loads(path.read_text())
    assert on_disk["labels"] == {"background": 0, "edema": 1, "core": 2}
    assert on_disk["tensorImageSize"] == "4D"  # unknown keys survive
    assert read_dataset_info(path) == info


def test_msd_style_labels_are_turned_round():
    assert parse_labels({"0": "background", "1": "liver", "2": "tumour"}) == {
        "background": 0,
        "liver": 1,
        "tumour": 2,
    }


@pytest.mark.parametrize(
    "labels, phrase",
    [
        ({"background": 0, "whole": []}, "region"),
        ({"background": 0, "whole": [1, -2]}, "region"),
        ({"liver": 1}, "background"),
        ({"background": 0, "a": 1, "b": 1}, "same value"),
        ({"background": 0, "a": -1}, "non-negative"),
        ({"background": 0, "a": 1.5}, "non-negative integer"),
    ],
)
def test_bad_labels_are_refused_with_reason(labels, phrase):
    with pytest.raises(ToolkitError, match=phrase):
        DatasetInfo.from_json(_info(labels=labels), "x/dataset.json")


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"channel_names": {"0": "T2", "2": "ADC"}}, "keys must be 0..1"),
        ({"channel_names": {}}, "channel_names"),
        ({"numTraining": -1}, "numTraining"),
        ({"file_ending": "nii"}, "file_ending"),
    ],
)
def test_bad_fields_name_the_key(change, phrase):
    with pytest.raises(ToolkitError, match=phrase) as err:
        DatasetInfo.from_json(_info(**change), "x/dataset.json")
    assert "x/dataset.json" in str(err.value)


def test_cases_come_from_files_and_skip_junk(tmp_path):
    paths = DatasetPaths(tmp_path / "D")
    write_dataset_info(paths.dataset_json, DatasetInfo.from_json(_info()))
    for name in ["b_0000.nii.gz", "b_0001.nii.gz", "a_0000.nii.gz", "._a_0000.nii.gz", "notes.txt"]:
        (paths.images_tr).mkdir(parents=True, exist_ok=True)
        (paths.images_tr / name).write_bytes(b"")
    paths.labels_tr.mkdir()
    for name in ["a.nii.gz", "c.nii.gz", "._c.nii.gz"]:
        (paths.labels_tr / name).write_bytes(b"")
    cases = training_cases(paths)
    assert [c.case for c in cases] == ["a", "b", "c"]  # label without images is still a case
    assert cases[0].images == [paths.images_tr / "a_0000.nii.gz", paths.images_tr / "a_0001.nii.gz"]
    assert cases[0].label == paths.labels_tr / "a.nii.gz"
    assert test_cases(paths) == []


def test_missing_dataset_json_says_to_convert(tmp_path):
    with pytest.raises(MissingStageError, match="toolkit convert"):
        load_dataset_info(DatasetPaths(tmp_path / "Nope"))
