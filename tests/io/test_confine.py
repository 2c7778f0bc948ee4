"""Path confinement (``io/confine.py``, issue 24 deliver 3) and the readers that use it."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from toolkit.container.spec import EnsembleSpec
from toolkit.convert.archive import safe_extract
from toolkit.core.plans import check_folder_names
from toolkit.core.selection import Selection
from toolkit.core.splits import read_splits
from toolkit.errors import ToolkitError
from toolkit.io.confine import (
    confined_path,
    is_inside,
    name_problem,
    path_problem,
    plain_name,
    relative_parts,
)
from toolkit.io.dataset_json import DatasetInfo


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("case_001", True),
        ("synth mr#2", True),
        ("3d_fullres-resenc-l", True),
        ("..", False),
        (".", False),
        ("", False),
        ("a/b", False),
        ("a\\b", False),
        (".hidden", False),
        ("x\ny", False),
        ("x\x00", False),
        (3, False),
    ],
)
def test_plain_names(name, ok):
    assert (name_problem(name) is None) == ok
    if not ok:
        with pytest.raises(ToolkitError, match="case") as err:
            plain_name(name, what="case", source="splits.json")
        assert str(err.value).startswith("splits.json: case")


@pytest.mark.parametrize(
    ("relative", "parts"),
    [
        ("images/t2", ["images", "t2"]),
        ("./imagesTr/a.nii.gz", ["imagesTr", "a.nii.gz"]),
        ("imagesTr\\a.nii.gz", ["imagesTr", "a.nii.gz"]),
        ("images/x/", ["images", "x"]),
        ("/etc", None),
        ("\\etc", None),
        ("C:/x", None),
        ("..", None),
        ("images/../..", None),
        ("a\\..\\..\\b", None),
        (".", None),
        ("", None),
        ("a\x00", None),
        (None, None),
    ],
)
def test_relative_paths(relative, parts):
    assert (path_problem(relative) is None) == (parts is not None)
    if parts is None:
        with pytest.raises(ToolkitError, match="inputs.json: relative_path"):
            relative_parts(relative, what="relative_path", source="inputs.json")
    else:
        assert relative_parts(relative, what="relative_path") == parts


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "inside" / "images").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "inside" / "images" / "t2").symlink_to(tmp_path / "outside")
    (tmp_path / "inside" / "images" / "ok").symlink_to(tmp_path / "inside" / "images")
    inside = tmp_path / "inside"
    assert confined_path(inside, "images/ok", what="p") == inside / "images" / "ok"
    with pytest.raises(ToolkitError, match="leads outside"):
        confined_path(inside, "images/t2", what="p", source="inputs.json")
    # the user's own folder: links are theirs
    path = confined_path(inside, "images/t2", what="p", follow_links=False)
    assert path == inside / "images" / "t2" and not is_inside(inside, path)


def test_splits_case_names_stay_plain(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([{"train": ["a", "../../x"], "val": ["b"]}]))
    with pytest.raises(ToolkitError, match="fold 0's case '../../x' holds a path separator"):
        read_splits(path)


def test_selection_and_ensemble_configurations_stay_plain(tmp_path):
    with pytest.raises(ToolkitError, match="configuration '../x'"):
        Selection.from_dict({"configurations": ["../x"], "folds": [0]}, tmp_path / "s.json")
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps({"format_version": 1, "configurations": [".."], "folds": [0]}))
    with pytest.raises(ToolkitError, match="configuration '..'"):
        EnsembleSpec.load(path)


def test_plans_folder_names_stay_plain():
    from types import SimpleNamespace

    from toolkit.core.plans import Plans

    plans = Plans.__new__(Plans)
    config = SimpleNamespace(
        name="3d", data_identifier="../../x", previous_stage=None, next_stage=None
    )
    plans.configurations = {"3d": config}
    with pytest.raises(ValueError, match="data_identifier '../../x'"):
        check_folder_names(plans)


@pytest.mark.parametrize("ending", ["/../x.gz", ".a/b", ".x\n"])
def test_a_file_ending_with_a_separator_is_refused(ending):
    document = {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "numTraining": 0}
    with pytest.raises(ToolkitError, match="file_ending"):
        DatasetInfo.from_json(document | {"file_ending": ending}, "dataset.json")


def test_a_tar_hard_link_to_no_earlier_file_is_refused(tmp_path):
    """Found by the fuzz suite: a hard link to a member the archive lacks (KeyError) or to
    another link (a loop: RecursionError)."""
    archive = tmp_path / "task.tar"
    with tarfile.open(archive, "w") as tar:
        for name, link in [("Task/a", "Task/b"), ("Task/b", "Task/a")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, link
            tar.addfile(info)
        data = tarfile.TarInfo("Task/c")
        data.size = 1
        tar.addfile(data, io.BytesIO(b"x"))
    with pytest.raises(ToolkitError, match="is a hard link to 'Task/b', not to a file before it"):
        safe_extract(archive, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_convert_holds_case_names_to_the_rule_later_stages_use(tmp_path):
    """Defect 5's other half: what convert accepts as a case name, a model archive accepts."""
    from toolkit.convert.sources import read_raw_dataset
    from toolkit.modelzip.archive import member_name_problem

    root = tmp_path / "raw"
    (root / "imagesTr").mkdir(parents=True)
    document = {"channel_names": {"0": "MR"}, "labels": {"background": 0}, "numTraining": 1}
    (root / "dataset.json").write_text(json.dumps(document))
    (root / "imagesTr" / "synth mr#2_0000.nii.gz").write_bytes(b"")
    (case,) = read_raw_dataset(root).training
    assert member_name_problem(f"example/imagesTr/{case.images[0].name}") is None
    (root / "imagesTr" / "a\\b_0000.nii.gz").write_bytes(b"")
    with pytest.raises(ToolkitError, match=r"case 'a\\\\b' holds a path separator"):
        read_raw_dataset(root)


@pytest.mark.parametrize(
    ("name", "link"), [("Task/x", ""), ("Task/a/.", ""), ("Task/up", "."), ("Task/self", "self")]
)
def test_a_tar_link_to_itself_is_refused(tmp_path, name, link):
    """Found by the fuzz suite: tarfile falls back to copying a symlink's target when the
    link cannot be made, and a link to itself recursed without end."""
    archive = tmp_path / "task.tar"
    with tarfile.open(archive, "w") as tar:
        folder = tarfile.TarInfo("Task/a")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    with pytest.raises(ToolkitError, match="is a link to itself or to a folder holding it"):
        safe_extract(archive, tmp_path / "out", quiet=True)
