"""2D natural images (PNG, BMP, TIFF) read as nnU-Net v2's NaturalImage2DIO reads them,
converted from an nnU-Net v2 raw dataset, and given to prediction.

The reference facts (nnunetv2/imageio/natural_image_reader_writer.py, 2.8.1): an RGB(A) file
is (c, 1, y, x) with R, G, B[, A] as channels, spacing (999, 1, 1) whatever the file says;
labels are read the same way; predictions are written in the input's file type as uint8
(uint16 from 255 labels on). Checked once against the reference's reader on PNG (RGB, RGBA,
16-bit grey), BMP and TIFF (RGB, float) files: the same arrays and spacing.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from toolkit.convert.stage import convert_task
from toolkit.errors import ToolkitError
from toolkit.fingerprint.stage import extract_fingerprint
from toolkit.inference.inputs import find_input_cases, read_input_case
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.io.images import (
    NO_SPACING,
    is_natural_image_file,
    read_channels,
    read_image,
    write_image,
)
from toolkit.planning.stage import plan_dataset
from toolkit.preprocessing.stage import preprocess_dataset
from toolkit.synthetic import generate_natural_task, make_natural_case
from toolkit.workspace import DatasetPaths


def _write(array, path, spacing=None, vector=None):
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3 if vector is None else vector)
    if spacing is not None:
        image.SetSpacing(spacing)
        image.SetOrigin((5.0, -3.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_rgb_file_is_three_channels_with_spacing_999_1_1(tmp_path, ending):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = _write(rgb, tmp_path / f"case_0000{ending}", spacing=(0.3, 0.4))
    image, geometry = read_channels([path])
    assert image.shape == (3, 1, 9, 11) and image.dtype == np.float32
    np.testing.assert_array_equal(image[:, 0], np.moveaxis(rgb, -1, 0))
    assert geometry.spacing_zyx == (NO_SPACING, 1.0, 1.0)
    assert geometry.origin == (0.0, 0.0)


def test_rgba_grey_16_bit_and_mixed_files(tmp_path):
    rng = np.random.default_rng(1)
    rgba = _write(rng.integers(0, 256, (6, 7, 4), dtype=np.uint8), tmp_path / "a_0000.png")
    grey = rng.integers(0, 65536, (6, 7)).astype(np.uint16)
    grey_path = _write(grey, tmp_path / "a_0001.png")
    image, _ = read_channels([rgba, grey_path])
    assert image.shape == (5, 1, 6, 7)
    np.testing.assert_array_equal(image[4, 0], grey)
    label, geometry = read_image(grey_path)
    assert label.shape == (1, 6, 7) and geometry.dimension == 2


def test_bad_natural_images_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ToolkitError, match="unreadable image") as err:
        read_channels([broken])
    assert "\n" not in str(err.value) and str(broken) in str(err.value)
    rgb = _write(np.zeros((5, 5, 3), np.uint8), tmp_path / "rgb.png")
    with pytest.raises(ToolkitError, match="components per pixel"):
        read_image(rgb)  # a label file must be grey


def test_label_png_written_like_the_reference(tmp_path):
    rgb = _write(np.zeros((5, 6, 3), np.uint8), tmp_path / "x_0000.png")
    _, geometry = read_channels([rgb])
    labels = np.zeros((1, 5, 6), np.uint8)
    labels[0, 1:3, 2:4] = 2
    out = tmp_path / "x.png"
    write_image(out, labels, geometry)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8 and back.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels[0])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_multi_page_tiff_stays_a_volume(tmp_path):
    volume = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = _write(volume, tmp_path / "v.tif", vector=False)
    array, geometry = read_image(path)
    assert array.shape == (3, 4, 5) and geometry.dimension == 3
    assert is_natural_image_file(path) and not is_natural_image_file(tmp_path / "v.nii.gz")


# conversion of an nnU-Net v2 raw dataset ---------------------------------------------------


@pytest.fixture(scope="module")
def rgb_task(tmp_path_factory):
    return generate_natural_task(
        tmp_path_factory.mktemp("natural"), n_cases=3, n_test=1, seed=5, shape=(32, 40)
    )


def test_rgb_dataset_converts_into_one_file_per_channel(rgb_task, tmp_path):
    paths = DatasetPaths(tmp_path / "ws" / "SynthRGB")
    result = convert_task(rgb_task, paths, workers=1, quiet=True)
    assert result.report.ok and (result.training_cases, result.test_cases) == (3, 1)
    info = load_dataset_info(paths)
    assert info.channels == ["rgb_to_0_1"] * 3 and info.labels["square"] == 2
    case = training_cases(paths, info)[0]
    image, geometry = read_channels(case.images)
    source, _ = read_channels([rgb_task / "imagesTr" / f"{case.case}_0000.png"])
    np.testing.assert_array_equal(image, source)
    assert geometry.spacing_zyx == (NO_SPACING, 1.0, 1.0)
    label, label_geometry = read_image(case.label)
    assert set(np.unique(label)) <= {0, 1, 2} and geometry.matches(label_geometry) is None


# float64 sums of nnU-Net v2's preprocessed 2d data (nnUNetv2_preprocess -c 2d, 2.8.1) of the
# three training cases of ``rgb_task``; the arrays were bit-identical to ours when checked
REFERENCE_PREPROCESSED_SUMS = {
    "synthrgb_001": 2325.078488752246,
    "synthrgb_002": 2268.1961368471384,
    "synthrgb_003": 2184.9216299131513,
}


def test_plans_and_data_of_an_rgb_dataset_equal_the_reference(rgb_task, tmp_path):
    """nnUNetv2_plan_and_preprocess -d 920 (2.8.1) on this very dataset (three cases of
    32 x 40, seed 5) planned: 2d only, spacing (1, 1), patch 32 x 40, batch 2, features
    32-256, strides 1,2,2,2, batch Dice, RGBTo01Normalization x 3 without mask, NaturalImage2DIO."""
    paths = DatasetPaths(tmp_path / "ws" / "SynthRGB")
    convert_task(rgb_task, paths, workers=1, quiet=True)
    extract_fingerprint(paths, workers=1, quiet=True)
    plans = plan_dataset(paths)
    assert set(plans.configurations) == {"2d"} and plans.transpose_forward == [0, 1, 2]
    c = plans.configuration("2d")
    assert c.target_spacing == [999.0, 1.0, 1.0] and c.patch_size == [32, 40]
    assert c.batch_size == 2 and c.batch_dice
    assert c.architecture.features_per_stage == [32, 64, 128, 256]
    assert c.architecture.strides == [[1, 1], [2, 2], [2, 2], [2, 2]]
    assert [(n.scheme, n.use_nonzero_mask) for n in c.normalization] == [("rgb_to_0_1", False)] * 3
    preprocess_dataset(paths, ["2d"], workers=1, quiet=True)
    for case, expected in REFERENCE_PREPROCESSED_SUMS.items():
        data = np.load(paths.preprocessed_dir("2d") / f"{case}.npy")
        assert data.shape == (3, 1, 32, 40) and data.dtype == np.float32
        assert float(data.astype(np.float64).sum()) == pytest.approx(expected, rel=1e-9)


def test_tif_dataset_converts(tmp_path):
    task = generate_natural_task(
        tmp_path / "src", n_cases=2, n_test=0, seed=1, shape=(24, 24), file_ending=".tif"
    )
    assert (task / "imagesTr" / "synthrgb_001_0000.tif").is_file()
    result = convert_task(task, DatasetPaths(tmp_path / "ws" / "T"), workers=1, quiet=True)
    assert result.report.ok and result.training_cases == 2


def _copy_task(task, tmp_path):
    import shutil

    copy = tmp_path / task.name
    shutil.copytree(task, copy)
    return copy


@pytest.mark.parametrize(
    "breakage, phrase",
    [
        ("channels", "file not found; the files before it hold 3 of the 4 channels"),
        ("extra", "is more than the 3 channel(s)"),
        ("rgb_label", "values per pixel"),
        ("missing", "file not found"),
    ],
)
def test_bad_natural_dataset_is_refused_in_one_line(rgb_task, tmp_path, breakage, phrase):
    task = _copy_task(rgb_task, tmp_path)
    data = json.loads((task / "dataset.json").read_text())
    case = "synthrgb_002"
    if breakage == "channels":
        data["channel_names"]["3"] = "zscore"
        (task / "dataset.json").write_text(json.dumps(data))
    elif breakage == "extra":
        _write(np.zeros((32, 40), np.uint8), task / "imagesTr" / f"{case}_0001.png")
    elif breakage == "rgb_label":
        _write(np.zeros((32, 40, 3), np.uint8), task / "labelsTr" / f"{case}.png")
    else:
        (task / "imagesTr" / f"{case}_0000.png").unlink()
    with pytest.raises(ToolkitError) as err:
        convert_task(task, DatasetPaths(tmp_path / "ws" / "X"), workers=1, quiet=True)
    assert phrase in str(err.value) and "\n" not in str(err.value)


# prediction inputs --------------------------------------------------------------------------


def test_an_rgb_case_0000_png_is_a_whole_case(tmp_path):
    image, _ = make_natural_case(0, seed=2, shape=(24, 28))
    _write(image, tmp_path / "a_0000.png")
    _write(image, tmp_path / "b.png")
    cases = find_input_cases(tmp_path, num_channels=3)
    assert [(c.case, c.file_ending, len(c.files)) for c in cases] == [
        ("a", ".png", 1),
        ("b", ".png", 1),
    ]
    for case in cases:
        data, geometry = read_input_case(case, 3)
        assert data.shape == (3, 1, 24, 28) and geometry.spacing_zyx[0] == NO_SPACING
    [single] = find_input_cases(tmp_path / "a_0000.png", num_channels=3)
    assert single.files == (tmp_path / "a_0000.png",)
    with pytest.raises(ToolkitError, match="holds 3 channel"):
        read_input_case(single, 4)
