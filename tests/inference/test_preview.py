import struct

import numpy as np
import pytest
from inference_helpers import make_case, make_plans, save_model_dir
from test_predict_cli import run

from toolkit.inference.preview import (
    DPI,
    LABEL_COLOURS,
    PANEL_INCHES,
    choose_slice,
    intensity_window,
    label_colour,
    picture_layout,
    preview_path,
    slice_axis,
    write_overlay,
)
from toolkit.io.images import NO_SPACING, Geometry, write_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's header, which must be a PNG's."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "shape, spacing, axis",
    [
        ((10, 20, 20), (3.0, 1.0, 1.0), 0),  # anisotropic: across the coarse axis
        ((20, 20, 20), (1.0, 1.0, 1.0), 0),  # isotropic: the first axis
        ((20, 20, 20), (1.0, 2.5, 2.5), 1),  # equal largest: the first of them
        ((20, 20, 20), (1.0, 1.0, 2.5), 2),
        ((1, 16, 20), (NO_SPACING, 0.5, 0.5), 0),  # a 2D image: its one slice
        ((30, 1, 20), (1.0, 0.5, 2.0), 1),  # a length-one axis wins over spacing
    ],
)
def test_slice_axis(shape, spacing, axis):
    assert slice_axis(shape, spacing) == axis


def test_choose_slice_follows_the_class_then_the_foreground():
    reference = np.zeros((6, 8, 8), np.uint8)
    reference[1, 2:6, 2:6] = 1  # 16 voxels of class 1 in slice 1
    reference[3, 2:4, 2:4] = 1  # 4 in slice 3
    reference[3, 4:7, 4:7] = 2  # class 2 only in slice 3
    prediction = np.zeros_like(reference)
    prediction[4, :, :] = 3  # class 3 only in the prediction, slice 4
    assert choose_slice(0, label=1, reference=reference, prediction=prediction) == 1
    assert choose_slice(0, label=2, reference=reference, prediction=prediction) == 3
    assert choose_slice(0, label=3, reference=reference, prediction=prediction) == 4
    # a class in neither: the most foreground of the reference (slice 1: 16; slice 3: 4 + 9)
    assert choose_slice(0, label=9, reference=reference, prediction=prediction) == 1
    assert choose_slice(0, reference=reference) == 1
    assert choose_slice(0, prediction=prediction) == 4  # no reference: the prediction's
    # across another axis: x columns 2..6 hold class 2 most at x 4, 5, 6 (equal: the first)
    assert choose_slice(2, label=2, reference=reference) == 4
    assert choose_slice(0, prediction=np.zeros((7, 3, 3), np.uint8)) == 3  # empty: the middle


def test_colours_are_one_table_indexed_by_label_value():
    assert [label_colour(v) for v in range(1, 6)] == list(LABEL_COLOURS[:5])
    assert len(set(LABEL_COLOURS)) == len(LABEL_COLOURS)
    assert label_colour(len(LABEL_COLOURS) + 2) == label_colour(2)  # more labels: the table again
    with pytest.raises(ValueError, match="background"):
        label_colour(0)


def test_intensity_window_is_the_percentiles_of_finite_values():
    values = np.arange(1001, dtype=np.float32)
    values[0] = np.nan
    low, high = intensity_window(values)
    assert low == pytest.approx(np.percentile(values[1:], 0.5))
    assert high == pytest.approx(np.percentile(values[1:], 99.5))
    assert intensity_window(np.full(5, 7.0)) == (7.0, 8.0)  # flat: a range of one


def test_preview_path_replaces_the_image_suffix():
    assert preview_path("out/case_01.nii.gz").name == "case_01_preview.png"
    assert preview_path("out/a.mha").name == "a_preview.png"


def test_three_dimensional_picture_with_reference(tmp_path):
    image, label, geometry = make_case(0)
    prediction = np.roll(label, 2, axis=2)
    path = tmp_path / "pictures" / "three.png"
    view = write_overlay(
        path,
        image,
        prediction,
        spacing_zyx=geometry.spacing_zyx,
        class_names={1: "organ", 2: "lesion"},
        reference=label,
        label=2,
        title="case 0",
    )
    assert view.axis == 0  # z has the largest spacing
    assert view.index == int(np.argmax((label == 2).sum(axis=(1, 2))))
    assert view.describe() == f"z {view.index} of {image.shape[0]}"
    aspect = geometry.spacing_zyx[1] / geometry.spacing_zyx[2]
    width, height = png_size(path)
    assert width == 3 * PANEL_INCHES * DPI  # image, reference, prediction
    assert height == round(picture_layout(image.shape[1:], aspect, 2, True, 3).height * DPI)
    assert [p.name for p in path.parent.iterdir()] == ["three.png"]  # written atomically


@pytest.mark.parametrize("shape", [(1, 30, 50), (30, 50)])
def test_two_dimensional_picture_without_reference(tmp_path, shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    prediction = np.zeros(shape, np.uint8)
    prediction[..., 10:20, 5:25] = 1
    view = write_overlay(
        tmp_path / "flat.png",
        image,
        prediction,
        spacing_zyx=(NO_SPACING, 0.5, 0.5),
        class_names={1: "cell"},
    )
    assert view.describe() == "2D"
    width, height = png_size(tmp_path / "flat.png")
    assert width == 2 * PANEL_INCHES * DPI  # image, prediction
    assert height == round(picture_layout((30, 50), 1.0, 1, False, 2).height * DPI)


def test_mismatched_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="the prediction has shape"):
        write_overlay(
            tmp_path / "x.png",
            np.zeros((4, 5, 6)),
            np.zeros((4, 5, 7), np.uint8),
            spacing_zyx=(1, 1, 1),
            class_names={},
        )


def test_predict_preview_writes_a_picture_beside_each_prediction(tmp_path, capsys):
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    model = save_model_dir(tmp_path / "m" / "3d_fullres", plans, "3d_fullres")
    for i in range(2):
        image, _, geometry = make_case(i, shape=(8, 24, 20))
        write_image(tmp_path / "in" / f"c{i}_0000.nii.gz", image, geometry)
    argv = ["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    argv += ["--model", str(model), "--device", "cpu", "--no-tta", "--preview", "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "c0.nii.gz",
        "c0_preview.png",
        "c1.nii.gz",
        "c1_preview.png",
    ]
    for i in range(2):
        assert png_size(tmp_path / "out" / f"c{i}_preview.png")[0] == 2 * PANEL_INCHES * DPI


def test_predict_preview_of_a_two_dimensional_image(tmp_path, capsys):
    plans = make_plans(spatial_dims=2, patch=(32, 32), target_spacing=(1.0, 0.5, 0.5))
    model = save_model_dir(tmp_path / "m" / "2d", plans, "2d")
    image, _, _ = make_case(0, shape=(1, 40, 36))
    flat = Geometry((0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (36, 40))
    write_image(tmp_path / "cell.nii.gz", image, flat)
    argv = ["predict", "-i", str(tmp_path / "cell.nii.gz"), "-o", str(tmp_path / "seg.nii.gz")]
    argv += ["--model", str(model), "--device", "cpu", "--no-tta", "--preview", "-q"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert png_size(tmp_path / "seg_preview.png")[0] == 2 * PANEL_INCHES * DPI
