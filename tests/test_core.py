"""Core pieces every stage relies on: atomic writes, images, workspace, plans, network."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io import atomic
from toolkit.io.images import Geometry, read_image, write_image
from toolkit.nets import UNet
from toolkit.workspace import DatasetPaths, resolve_workspace


def test_atomic_json_leaves_no_temp_and_rejects_nan(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic.write_json(target, {"a": np.float32(1.5), "b": float("nan"), "c": np.arange(3)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": None, "c": [0, 1, 2]}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("dims", [2, 3])
def test_image_round_trip_keeps_geometry(tmp_path, dims):
    shape = (5, 6, 7)[3 - dims :]
    img = sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.int16).reshape(shape))
    img.SetSpacing((0.7, 0.8, 3.3)[:dims])
    img.SetOrigin((1.5, -2.0, 10.25)[:dims])
    direction = np.eye(dims)[::-1].ravel() if dims == 3 else (0.0, 1.0, 1.0, 0.0)
    img.SetDirection(tuple(direction))
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(img, str(src))
    array, geometry = read_image(src)
    assert array.shape == (1,) * (3 - dims) + shape
    assert geometry.shape_zyx == array.shape
    write_image(tmp_path / "out.mha", array, geometry)
    back = sitk.ReadImage(str(tmp_path / "out.mha"))
    assert Geometry.of(back) == Geometry.of(sitk.ReadImage(str(src)))
    assert geometry.spacing_zyx[-1] == pytest.approx(0.7)


def test_unreadable_image_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ToolkitError) as info:
        read_image(bad)
    assert str(bad) in info.value.one_line() and "\n" not in info.value.one_line()


def test_workspace_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("TOOLKIT_WORKSPACE", raising=False)
    assert str(resolve_workspace(None)) == "workspace"
    monkeypatch.setenv("TOOLKIT_WORKSPACE", str(tmp_path))
    assert resolve_workspace(None) == tmp_path
    assert resolve_workspace(tmp_path / "x") == tmp_path / "x"
    paths = DatasetPaths.open(None, "Task04_Hippocampus")
    assert (
        paths.fold_dir("3d_fullres", 2) == tmp_path / "Task04_Hippocampus/models/3d_fullres/fold_2"
    )
    with pytest.raises(MissingStageError, match="toolkit convert"):
        paths.require_raw()
    with pytest.raises(ToolkitError, match="dataset name"):
        DatasetPaths.open(None, "../evil")


def _plans():
    arch = Architecture([32, 64], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    cfg = Configuration(
        "3d_fullres",
        "3d_fullres",
        3,
        [1.0] * 3,
        [36, 50, 35],
        [40, 56, 40],
        2,
        arch,
        [Normalization("zscore")],
    )
    return Plans(
        "x",
        {"0": "T2"},
        {"background": 0, "a": 1, "b": 2},
        [0, 1, 2],
        [0, 1, 2],
        [1.0] * 3,
        [36, 50, 35],
        {"3d_fullres": cfg},
    )


def test_plans_json_round_trip_and_errors(tmp_path):
    plans = _plans()
    plans.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json") == plans
    assert plans.num_classes == 3
    with pytest.raises(ToolkitError, match="available: 3d_fullres"):
        plans.configuration("2d")
    data = plans.to_dict()
    del data["configurations"]["3d_fullres"]["patch_size"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ToolkitError, match="patch_size is missing"):
        Plans.load(tmp_path / "bad.json")


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_shapes_and_deep_supervision(dims):
    arch = Architecture(
        [8, 16, 32], [[3] * dims] * 3, [[1] * dims, [2] * dims, [2] * dims], [2, 2, 2], [2, 2]
    )
    net = UNet(2, 3, arch, dims)
    x = torch.randn(2, 2, *([16] * dims))
    outs = net(x)
    assert [o.shape[2:] for o in outs] == [torch.Size([16] * dims), torch.Size([8] * dims)]
    net.deep_supervision = False
    assert net(x).shape == (2, 3, *([16] * dims))
