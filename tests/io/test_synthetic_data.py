"""The synthetic MSD tasks: seeded, in MSD format, with real downloads' quirks, and learnable."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.errors import ToolkitError
from toolkit.synthetic import (
    TASKS,
    generate_natural_task,
    generate_task,
    generate_tasks,
    make_case,
    make_natural_case,
)


def test_same_seed_same_case_different_seed_different_case():
    a, b, c = make_case("mr", 3, seed=1), make_case("mr", 3, seed=1), make_case("mr", 3, seed=2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)


def test_a_case_does_not_depend_on_the_number_of_cases(tmp_path):
    few = generate_task("2d", tmp_path / "few", n_cases=2, n_test=0, shape=(32, 32))
    many = generate_task("2d", tmp_path / "many", n_cases=4, n_test=0, shape=(32, 32))
    for name in ["synth2d_001", "synth2d_002"]:
        x = sitk.GetArrayFromImage(sitk.ReadImage(str(few / "imagesTr" / f"{name}.nii.gz")))
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(many / "imagesTr" / f"{name}.nii.gz")))
        assert np.array_equal(x, y)


def test_mr_task_layout_and_quirks(msd_tasks):
    root = msd_tasks["mr"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"0": "background", "1": "edema", "2": "core"}
    assert meta["numTraining"] == len(meta["training"]) == 3
    assert (root / "imagesTr" / "._synthmr_001.nii.gz").is_file()
    assert (root / "labelsTr" / "._synthmr_001.nii.gz").is_file()
    directions = set()
    for entry in meta["training"]:
        image = sitk.ReadImage(str(root / entry["image"]))
        label = sitk.ReadImage(str(root / entry["label"]))
        assert image.GetDimension() == 4 and image.GetSize()[3] == 2  # MSD's 4D multi-modal
        assert image.GetSpacing()[:3] == pytest.approx((0.8, 0.8, 3.0))  # z thicker
        assert label.GetPixelID() == sitk.sitkFloat32  # float labels
        values = np.unique(sitk.GetArrayFromImage(label))
        assert values.tolist() == [0.0, 1.0, 2.0]  # both labels in every case
        directions.add(label.GetDirection())
    assert len(directions) > 1 and any(d != (1, 0, 0, 0, 1, 0, 0, 0, 1) for d in directions)
    assert len(meta["test"]) == 1 and (root / meta["test"][0]).is_file()


def test_mr_labels_are_nested():
    for index in range(6):
        label = make_case("mr", index).label
        core = label == 2
        # every in-plane neighbour of a core voxel is core or edema, never background
        for axis in (1, 2):
            for shift in (1, -1):
                assert not np.any(np.roll(core, shift, axis=axis) & (label == 0))


def _nearest_mean_dice(case):
    """Dice of a voxel-wise nearest-class-mean classifier: a floor for what a network learns."""
    x = case.image.reshape(case.image.shape[0], -1).astype(np.float64)
    y = case.label.reshape(-1).astype(int)
    brightness = x.mean(0)
    inside = brightness > 0.2 * np.percentile(brightness, 99)  # the body, not the air around it
    means = np.stack([x[:, (y == k) & inside].mean(1) for k in range(3)])
    scale = x[:, inside].std(1, keepdims=True).T
    dist = (((x.T[:, None, :] - means[None]) / scale[:, None, :]) ** 2).sum(-1)
    pred = np.where(inside, dist.argmin(1), 0)
    return [
        2 * np.sum((pred == k) & (y == k)) / (np.sum(pred == k) + np.sum(y == k)) for k in (1, 2)
    ]


@pytest.mark.parametrize("kind", ["mr", "2d"])
def test_objects_are_visible_from_intensity(kind):
    # what makes the training engineer's Dice >= 0.8 target reachable
    dice = np.array([_nearest_mean_dice(make_case(kind, i)) for i in range(3)])
    assert dice.min() > 0.6, dice


def test_ct_task_is_in_hounsfield_units():
    case = make_case("ct", 0)
    image, label = case.image[0], case.label
    assert image.dtype == np.int16
    assert abs(float(np.median(image[:, :2, :2])) + 1000) < 60  # air in the corners
    assert 60 < float(np.mean(image[label == 1])) < 120  # organ
    assert abs(float(np.mean(image[label == 2])) - float(np.mean(image[label == 1]))) > 40  # lesion
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    sx, sy, sz = case.spacing
    assert max(sx, sy, sz) / min(sx, sy, sz) < 3  # near-isotropic


def test_2d_task_is_2d(msd_tasks):
    root = msd_tasks["2d"]
    image = sitk.ReadImage(str(root / "imagesTr" / "synth2d_001.nii.gz"))
    assert image.GetDimension() == 2
    assert json.loads((root / "dataset.json").read_text())["tensorImageSize"] == "2D"


def test_existing_task_needs_force(tmp_path):
    first = generate_task("2d", tmp_path, n_cases=1, n_test=0, shape=(32, 32))
    with pytest.raises(ToolkitError, match="--force"):
        generate_task("2d", tmp_path, n_cases=1, n_test=0, shape=(32, 32))
    again = generate_task("2d", tmp_path, n_cases=2, n_test=0, shape=(32, 32), force=True)
    assert again == first and len(list((again / "labelsTr").glob("synth2d_*"))) == 2
    assert [p.name for p in tmp_path.iterdir()] == [TASKS["2d"].folder]  # no temporary left


@pytest.mark.parametrize(
    "kwargs, phrase",
    [
        ({"kind": "pet"}, "unknown synthetic task"),
        ({"kind": "mr", "shape": (24, 64)}, "shape"),
        ({"kind": "2d", "n_cases": 0}, "at least one"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, phrase):
    with pytest.raises(ToolkitError, match=phrase):
        generate_task(out_dir=tmp_path, **kwargs)


def test_all_expands_to_every_task(tmp_path):
    folders = generate_tasks(["all"], tmp_path, n_cases=1, n_test=0)
    assert [f.name for f in folders] == [
        *(TASKS[k].folder for k in ("mr", "ct", "2d", "brats", "sparse")),
        "Dataset920_SynthRGB",
    ]


def test_rgb_task_is_seeded_colour_png_in_the_raw_layout(tmp_path):
    first, label = make_natural_case(3, seed=4)
    again, _ = make_natural_case(3, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, make_natural_case(3, 5)[0])
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    # the classes differ in colour: warm discs are redder than cold squares
    red_minus_blue = first[..., 0].astype(float) - first[..., 2]
    assert red_minus_blue[label == 1].mean() > 50 > red_minus_blue[label == 2].mean() + 100
    task = generate_natural_task(tmp_path, n_cases=2, n_test=1, seed=4)
    data = json.loads((task / "dataset.json").read_text())
    assert data["file_ending"] == ".png" and data["channel_names"]["2"] == "rgb_to_0_1"
    assert sorted(p.name for p in (task / "imagesTr").iterdir()) == [
        "synthrgb_001_0000.png",
        "synthrgb_002_0000.png",
    ]
    assert (task / "labelsTs" / "synthrgb_003.png").is_file()
    with pytest.raises(ToolkitError, match="--force"):
        generate_natural_task(tmp_path, n_cases=1)
    with pytest.raises(ToolkitError, match="file ending"):
        generate_natural_task(tmp_path, n_cases=1, force=True, file_ending=".jpg")
