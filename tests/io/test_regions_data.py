"""Regions and the ignore label at the data stages: demo-data, convert (--regions), verify."""

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.cli import main
from toolkit.convert.stage import convert_task
from toolkit.core.labels import dataset_label_model
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import load_dataset_info
from toolkit.synthetic import generate_task
from toolkit.synthetic.msd import DENSE_TEST_LABELS
from toolkit.verify.stage import verify_dataset
from toolkit.workspace import DatasetPaths

SHAPE = (12, 32, 32)


def run(capsys, *args):
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def brats_task(tmp_path_factory):
    return generate_task(
        "brats", tmp_path_factory.mktemp("src"), n_cases=2, n_test=1, shape=SHAPE, seed=3
    )


@pytest.fixture(scope="module")
def sparse_task(tmp_path_factory):
    return generate_task(
        "sparse", tmp_path_factory.mktemp("src"), n_cases=2, n_test=1, shape=SHAPE, seed=3
    )


def test_brats_task_declares_regions_and_converts_with_them(brats_task, tmp_path):
    paths = DatasetPaths(tmp_path / "Task904_SynthBraTS")
    result = convert_task(brats_task, paths, workers=1, quiet=True)
    assert result.report.ok, [p.line() for p in result.report.problems]
    info = load_dataset_info(paths)
    assert info.regions_class_order == [1, 2, 3]
    model = dataset_label_model(info)
    assert model.names == {1: "whole tumour", 2: "tumour core", 3: "enhancing tumour"}
    assert info.num_channels == 4
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(paths.labels_tr / "synthbrats_001.nii.gz")))
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # nested: edema, core, enhancing rim
    # a converted nnU-Net v2 raw dataset keeps its regions
    again = DatasetPaths(tmp_path / "again")
    convert_task(paths.raw, again, workers=1, quiet=True)
    assert load_dataset_info(again).labels == info.labels
    assert load_dataset_info(again).regions_class_order == [1, 2, 3]


def test_sparse_task_has_ignore_slices_and_dense_test_labels(sparse_task, tmp_path):
    label = sitk.GetArrayFromImage(
        sitk.ReadImage(str(sparse_task / "labelsTr/synthsparse_001.nii.gz"))
    )
    assert (label[1:4] == 3).all() and (label[0] != 3).all() and (label[4] != 3).all()
    dense = sitk.GetArrayFromImage(
        sitk.ReadImage(str(sparse_task / DENSE_TEST_LABELS / "synthsparse_003.nii.gz"))
    )
    assert dense.shape == SHAPE and 3 not in np.unique(dense) and dense.max() == 2
    paths = DatasetPaths(tmp_path / "Task905_SynthSparse")
    assert convert_task(sparse_task, paths, workers=1, quiet=True).report.ok
    model = dataset_label_model(load_dataset_info(paths))
    assert model.ignore == 3 and model.names == {1: "edema", 2: "core"}


def test_convert_regions_option_on_an_msd_task(capsys, sparse_task, tmp_path):
    code, _, err = run(
        capsys,
        "convert",
        sparse_task,
        "--workspace",
        tmp_path,
        "--name",
        "R",
        "--regions",
        "lesion=1,2;core=2",
        "--quiet",
    )
    assert code == 0, err
    data = json.loads((tmp_path / "R/raw/dataset.json").read_text())
    assert data["labels"] == {"background": 0, "lesion": [1, 2], "core": [2], "ignore": 3}
    assert data["regions_class_order"] == [1, 2]


@pytest.mark.parametrize(
    "regions, phrase",
    [
        ("lesion=1,7;core=7", "values \\[7\\] the source does not declare"),
        ("lesion=1,2;core=1,2", "written value is not clear"),
        ("lesion", "is not NAME=VALUE"),
    ],
)
def test_convert_regions_option_errors_are_one_line(capsys, sparse_task, tmp_path, regions, phrase):
    code, out, err = run(
        capsys, "convert", sparse_task, "--workspace", tmp_path, "--regions", regions, "--quiet"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(phrase, err)
    assert not (tmp_path / sparse_task.name).exists()


def test_ignore_that_is_not_the_highest_value_is_one_line_exit_2(capsys, sparse_task, tmp_path):
    paths = DatasetPaths(tmp_path / "S")
    convert_task(sparse_task, paths, workers=1, quiet=True)
    data = json.loads(paths.dataset_json.read_text())
    data["labels"] = {"background": 0, "edema": 1, "ignore": 2, "core": 3}
    paths.dataset_json.write_text(json.dumps(data))
    code, out, err = run(capsys, "verify", "S", "--workspace", tmp_path)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: {paths.dataset_json}: label 'ignore' must have the highest value, one above "
        "the others (4), not 2"
    ]
    with pytest.raises(ToolkitError, match="highest value"):
        verify_dataset(paths)
    # convert refuses the same dataset before writing anything
    code, _, err = run(capsys, "convert", paths.raw, "--workspace", tmp_path, "--name", "T")
    assert code == 2 and "highest value" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "T").exists()
