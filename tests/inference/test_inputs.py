import numpy as np
import pytest
import SimpleITK as sitk
from inference_helpers import make_case, make_plans, save_model_dir

from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.errors import ToolkitError
from toolkit.inference.files import predict_paths
from toolkit.inference.inputs import find_input_cases, read_input_case
from toolkit.inference.options import ModelOptions
from toolkit.inference.predictor import Predictor
from toolkit.io.images import read_image, write_image


def _write(path, seed=0, shape=(6, 10, 8)):
    image, _, geometry = make_case(seed, shape=shape)
    write_image(path, image, geometry)
    return image, geometry


def test_folder_groups_channel_files_and_keeps_single_files(tmp_path):
    _write(tmp_path / "a_0000.nii.gz")
    _write(tmp_path / "a_0001.nii.gz")
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((6, 10, 8), np.float32))] * 2)
    sitk.WriteImage(four, str(tmp_path / "b.mha"))
    (tmp_path / ".hidden_0000.nii.gz").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not an image")
    cases = find_input_cases(tmp_path, 2)
    assert [(c.case, len(c.files), c.file_ending) for c in cases] == [
        ("a", 2, ".nii.gz"),
        ("b", 1, ".mha"),
    ]
    image, geometry = read_input_case(cases[0], 2)
    assert (
        image.shape == (2, 6, 10, 8) and image.dtype == np.float32 and geometry.size == (8, 10, 6)
    )
    assert read_input_case(cases[1], 2)[0].shape == (2, 6, 10, 8)


def test_a_channel_file_brings_its_siblings(tmp_path):
    _write(tmp_path / "a_0000.nrrd")
    _write(tmp_path / "a_0001.nrrd")
    (case,) = find_input_cases(tmp_path / "a_0000.nrrd", 2)
    assert [p.name for p in case.files] == ["a_0000.nrrd", "a_0001.nrrd"] and case.case == "a"
    (single,) = find_input_cases(tmp_path / "a_0001.nrrd", 1)
    assert single.case == "a" and single.file_ending == ".nrrd"


@pytest.mark.parametrize(
    "files,channels,message",
    [
        (["a_0000.nii.gz"], 2, "has channel files 0000 but the model needs 2 channel"),
        (["a_0000.nii.gz", "a_0002.nii.gz"], 2, "has channel files 0000, 0002"),
        (["a_0000.nii.gz", "a.nii.gz"], 1, "both as channel files and as a single file"),
        ([], 1, "no images found"),
    ],
)
def test_folder_problems_are_named(tmp_path, files, channels, message):
    for name in files:
        _write(tmp_path / name)
    with pytest.raises(ToolkitError, match=message):
        find_input_cases(tmp_path, channels)


def test_two_dimensional_images_become_one_slice(tmp_path):
    image = sitk.GetImageFromArray(np.arange(30, dtype=np.float32).reshape(5, 6))
    image.SetSpacing((0.5, 0.7))
    sitk.WriteImage(image, str(tmp_path / "flat.nii.gz"))
    (case,) = find_input_cases(tmp_path / "flat.nii.gz", 1)
    array, geometry = read_input_case(case, 1)
    assert array.shape == (1, 1, 5, 6) and geometry.dimension == 2


def test_missing_input_is_reported(tmp_path):
    with pytest.raises(ToolkitError, match="input not found"):
        find_input_cases(tmp_path / "nothing.nii.gz", 1)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ToolkitError, match="not an image file"):
        find_input_cases(tmp_path / "x.txt", 1)


def test_postprocessing_is_applied_to_the_written_labels(tmp_path):
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    model = save_model_dir(tmp_path / "models" / "3d_fullres", plans, "3d_fullres")
    image, _, geometry = make_case(2)
    write_image(tmp_path / "in" / "c.nii.gz", image, geometry)
    predictor = Predictor.from_model_dir(model, ModelOptions(device="cpu", use_mirroring=False))
    predict_paths([predictor], tmp_path / "in", tmp_path / "plain", quiet=True)
    choice = Postprocessing(largest_component_foreground=True, largest_component_classes=[1, 2])
    predict_paths([predictor], tmp_path / "in", tmp_path / "pp", postprocessing=choice, quiet=True)
    plain, _ = read_image(tmp_path / "plain" / "c.nii.gz")
    processed, _ = read_image(tmp_path / "pp" / "c.nii.gz")
    assert np.array_equal(processed, apply_postprocessing(plain, choice))
