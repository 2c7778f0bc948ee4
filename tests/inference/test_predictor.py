import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_helpers import FLIPPED_DIRECTION, make_case, make_plans, save_model_dir

from toolkit.errors import ToolkitError
from toolkit.inference.ensemble import load_probabilities
from toolkit.inference.export import logits_to_original
from toolkit.inference.files import predict_paths, predict_with_ensemble
from toolkit.inference.options import ModelOptions
from toolkit.inference.predictor import Predictor
from toolkit.io.images import Geometry, read_image, write_image
from toolkit.preprocessing.case import preprocess_case, revert_to_original


def _geometry_of(path):
    return Geometry.of(sitk.ReadImage(str(path)))


def _assert_same_geometry(a: Geometry, b: Geometry):
    assert a.size == b.size
    assert np.allclose(a.spacing, b.spacing, rtol=0, atol=1e-6)
    assert np.allclose(a.origin, b.origin, rtol=0, atol=1e-6)
    assert np.allclose(a.direction, b.direction, rtol=0, atol=1e-9)


@pytest.fixture
def model_3d(tmp_path):
    # target spacing differs from the images' so that both resampling directions are exercised
    plans = make_plans(target_spacing=(3.0, 1.1, 1.0))
    return save_model_dir(tmp_path / "models" / "3d_fullres", plans, "3d_fullres", folds=(0, 1))


def test_output_geometry_equals_input_for_non_identity_direction_and_anisotropic_spacing(
    tmp_path, model_3d
):
    image, _, geometry = make_case(1, shape=(13, 37, 29), spacing_zyx=(3.3, 0.7, 0.9))
    assert geometry.direction == FLIPPED_DIRECTION
    source = tmp_path / "in" / "case_0000.nii.gz"
    write_image(source, image, geometry)
    predictor = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu"))
    reports = predict_paths([predictor], source, tmp_path / "out", quiet=True)
    assert [r.case for r in reports] == ["case"]
    out = tmp_path / "out" / "case.nii.gz"
    _assert_same_geometry(_geometry_of(out), _geometry_of(source))
    labels, _ = read_image(out)
    assert labels.shape == image.shape
    assert set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_probabilities_are_saved_with_their_geometry(tmp_path, transpose):
    plans = make_plans(
        transpose_forward=transpose, target_spacing=(1.0, 2.0, 1.5), patch=(16, 16, 16)
    )
    model = save_model_dir(tmp_path / "models" / "3d_fullres", plans, "3d_fullres")
    image, _, geometry = make_case(0, shape=(14, 30, 22), spacing_zyx=(2.0, 1.0, 1.5))
    source = tmp_path / "in" / "a.mha"
    write_image(source, image, geometry)
    predictor = Predictor.from_model_dir(model, ModelOptions(device="cpu", use_mirroring=False))
    predict_paths([predictor], source, tmp_path / "out", save_probabilities=True, quiet=True)
    saved = load_probabilities(tmp_path / "out" / "a.npz")
    assert saved.probabilities.shape == (3, *image.shape)
    assert np.allclose(saved.probabilities.sum(0), 1.0, atol=3e-3)  # float16 on disk
    _assert_same_geometry(saved.geometry, geometry)
    labels, _ = read_image(tmp_path / "out" / "a.mha")  # the input's format is kept
    agree = labels == saved.probabilities.argmax(0)
    assert agree.mean() > 0.999  # float16 rounding may flip exact ties


def test_predict_case_returns_original_shape_and_probabilities(model_3d):
    image, _, geometry = make_case(2)
    predictor = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", use_mirroring=False))
    assert len(predictor.networks) == 2
    prediction = predictor.predict_case(image[None], geometry)
    assert prediction.labels.shape == image.shape and prediction.labels.dtype == np.uint8
    assert prediction.probabilities.shape == (3, *image.shape)
    assert np.allclose(prediction.probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(prediction.labels, prediction.probabilities.argmax(0))
    without = predictor.predict_case(image[None], geometry, with_probabilities=False)
    assert without.probabilities is None
    assert np.array_equal(without.labels, prediction.labels)


def test_predict_preprocessed_equals_predict_case(model_3d):
    image, _, geometry = make_case(3)
    predictor = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", use_mirroring=False))
    data, _, props = preprocess_case(
        image[None], geometry, predictor.plans, predictor.configuration
    )
    a = predictor.predict_preprocessed(data, props)
    b = predictor.predict_case(image[None], geometry)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_export_matches_the_preprocessing_inverse(tmp_path):
    """Without resampling, our per-class export equals revert_to_original of the softmax."""
    plans = make_plans(transpose_forward=(2, 0, 1), target_spacing=(0.8, 2.5, 0.9))
    configuration = plans.configuration("3d_fullres")
    image, _, geometry = make_case(4, shape=(12, 30, 26))
    image[:, :3] = 0  # a border of zeros: the crop box is smaller than the image
    image[:, :, -4:] = 0
    data, _, props = preprocess_case(image[None], geometry, plans, configuration)
    assert props.shape_after_cropping != props.shape_before_cropping
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, *data.shape[1:])).astype(np.float32)
    labels, probabilities = logits_to_original(list(logits.copy()), props, plans, configuration)
    softmax = torch.softmax(torch.from_numpy(logits), 0).numpy()
    expected = revert_to_original(softmax, props, plans, configuration)
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.array_equal(labels, expected.argmax(0))
    labels_only, none = logits_to_original(
        list(logits.copy()), props, plans, configuration, with_probabilities=False
    )
    assert none is None and np.array_equal(labels_only, labels)


def test_folds_are_chosen_and_missing_ones_reported(model_3d):
    assert (
        len(Predictor.from_model_dir(model_3d, ModelOptions(folds=[1], device="cpu")).networks) == 1
    )
    with pytest.raises(ToolkitError, match="fold 3 has no checkpoint_final.pt"):
        Predictor.from_model_dir(model_3d, ModelOptions(folds=[3], device="cpu"))
    with pytest.raises(ToolkitError, match="not a model folder"):
        Predictor.from_model_dir(model_3d.parent, ModelOptions(device="cpu"))


def test_mirroring_axes_default_and_off(model_3d):
    assert Predictor.from_model_dir(model_3d, ModelOptions(device="cpu")).mirror_axes == (0, 1, 2)
    assert (
        Predictor.from_model_dir(
            model_3d, ModelOptions(device="cpu", use_mirroring=False)
        ).mirror_axes
        == ()
    )


def test_2d_configuration_predicts_a_volume_slice_by_slice(tmp_path):
    plans = make_plans(spatial_dims=2, patch=(32, 32), features=(4, 8, 16))
    model = save_model_dir(tmp_path / "models" / "2d", plans, "2d")
    predictor = Predictor.from_model_dir(model, ModelOptions(device="cpu"))
    assert predictor.mirror_axes == (1, 2) and predictor.patch_size == (1, 32, 32)
    image, _, geometry = make_case(5, shape=(7, 40, 36))
    prediction = predictor.predict_case(image[None], geometry)
    assert prediction.labels.shape == image.shape


def test_cascade_runs_the_low_resolution_stage_first(tmp_path):
    plans = make_plans(cascade=True)
    models = tmp_path / "Synth" / "models"
    save_model_dir(models / "3d_lowres", plans, "3d_lowres")
    save_model_dir(models / "3d_cascade_fullres", plans, "3d_cascade_fullres", seed=7)
    predictor = Predictor.from_model_dir(
        models / "3d_cascade_fullres", ModelOptions(device="cpu", use_mirroring=False)
    )
    assert (
        predictor.previous_stage is not None
        and predictor.previous_stage.configuration.name == "3d_lowres"
    )
    image, label, geometry = make_case(6)
    counted = []
    automatic = predictor.predict_case(image[None], geometry, on_windows=counted.append)
    assert automatic.labels.shape == image.shape
    assert sum(counted) == predictor.estimate_windows(image.shape, geometry)
    # given the first stage's labels instead, the second stage uses them as its extra channels
    given = predictor.predict_case(image[None], geometry, previous_stage=label)
    empty = predictor.predict_case(image[None], geometry, previous_stage=np.zeros_like(label))
    assert given.labels.shape == image.shape
    assert not np.allclose(given.probabilities, empty.probabilities)


def test_cascade_without_its_first_stage_says_so(tmp_path):
    plans = make_plans(cascade=True)
    model = save_model_dir(
        tmp_path / "Synth" / "models" / "3d_cascade_fullres", plans, "3d_cascade_fullres"
    )
    with pytest.raises(ToolkitError, match="3d_lowres must be trained"):
        Predictor.from_model_dir(model, ModelOptions(device="cpu"))


def test_from_networks_for_validation(model_3d):
    loaded = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", use_mirroring=False))
    again = Predictor.from_networks(
        loaded.plans, "3d_fullres", loaded.networks, ModelOptions(device="cpu", use_mirroring=False)
    )
    image, _, geometry = make_case(7)
    assert np.array_equal(
        loaded.predict_case(image[None], geometry).labels,
        again.predict_case(image[None], geometry).labels,
    )


def test_configuration_ensemble_averages_probabilities(tmp_path, model_3d):
    image, _, geometry = make_case(8)
    a = Predictor.from_model_dir(
        model_3d, ModelOptions(folds=[0], device="cpu", use_mirroring=False)
    )
    b = Predictor.from_model_dir(
        model_3d, ModelOptions(folds=[1], device="cpu", use_mirroring=False)
    )
    pa, pb = a.predict_case(image[None], geometry), b.predict_case(image[None], geometry)
    both = predict_with_ensemble([a, b], image[None], geometry)
    assert np.allclose(both.probabilities, (pa.probabilities + pb.probabilities) / 2, atol=1e-6)
    assert np.array_equal(both.labels, both.probabilities.argmax(0))


def test_damaged_checkpoint_is_a_one_line_error(model_3d):
    (model_3d / "fold_0" / "checkpoint_final.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ToolkitError, match="cannot be loaded as a checkpoint"):
        Predictor.from_model_dir(model_3d, ModelOptions(folds=[0], device="cpu"))
    plans = json.loads((model_3d / "plans.json").read_text())
    assert plans["format_version"] == 1


def test_gpu_accumulation_rule():
    """A CT-sized volume (1 channel, 3 classes, 400x512x512) needs 1.7 GB of accumulators."""
    from toolkit.inference.predictor import accumulation_bytes, fits_on_gpu

    shape, patch = (1, 400, 512, 512), (128, 128, 128)
    assert accumulation_bytes(shape, patch, 3) == 4 * 400 * 512 * 512 * 4
    assert fits_on_gpu(shape, patch, 3, free_bytes=75 * 2**30)
    assert not fits_on_gpu(shape, patch, 3, free_bytes=3 * 2**30)  # half is for activations
    # a volume smaller than the patch is padded to it
    assert accumulation_bytes((2, 10, 20, 30), (16, 32, 32), 2) == 4 * 16 * 32 * 32 * 4


def test_out_of_gpu_memory_falls_back_to_accumulating_on_the_cpu(model_3d, monkeypatch):
    import toolkit.inference.predictor as predictor_module

    predictor = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", use_mirroring=False))
    image, _, geometry = make_case(3)
    expected = predictor.predict_case(image[None], geometry).labels
    real = predictor_module.sliding_window_logits
    places = []

    def sliding_window(networks, data, num_classes, settings, device, where, on_windows):
        places.append(where.type)
        if where.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(networks, data, num_classes, settings, device, where, on_windows)

    monkeypatch.setattr(predictor_module, "sliding_window_logits", sliding_window)
    monkeypatch.setattr(predictor, "_accumulate_device", lambda shape: torch.device("cuda"))
    assert np.array_equal(predictor.predict_case(image[None], geometry).labels, expected)
    assert places == ["cuda", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("dims", [3, 2])
def test_compiled_predictor_gives_the_eager_labels(model_3d, tmp_path, dims):
    model = model_3d
    if dims == 2:
        plans = make_plans(spatial_dims=2, patch=(32, 32), features=(4, 8, 16))
        model = save_model_dir(tmp_path / "models" / "2d", plans, "2d")
    image, _, geometry = make_case(3)
    eager = Predictor.from_model_dir(model, ModelOptions(device="cpu", use_mirroring=False))
    compiled = Predictor.from_model_dir(
        model, ModelOptions(device="cpu", use_mirroring=False, compile=True)
    )
    assert compiled.compiled and "compiled" in compiled.describe()
    a = eager.predict_case(image[None], geometry)
    b = compiled.predict_case(image[None], geometry)
    assert not any(n.failed for n in compiled.networks)
    assert np.array_equal(a.labels, b.labels)
    assert np.allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_a_failed_compile_falls_back_to_eager(model_3d, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    import toolkit.inference.compiled as compiled_module

    def broken(network, **_):
        def run(x):
            raise TorchDynamoException("C++ compile error: cannot find cc1plus\nmore lines")

        return run

    monkeypatch.setattr(compiled_module.torch, "compile", broken)
    monkeypatch.setattr(compiled_module, "compile_unavailable_reason", lambda device: None)
    image, _, geometry = make_case(3)
    eager = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", use_mirroring=False))
    compiled = Predictor.from_model_dir(
        model_3d, ModelOptions(device="cpu", use_mirroring=False, compile=True)
    )
    labels = compiled.predict_case(image[None], geometry).labels
    assert np.array_equal(labels, eager.predict_case(image[None], geometry).labels)
    assert [n.failed for n in compiled.networks] == ["C++ compile error: cannot find cc1plus"] * 2
    assert compiled.describe().endswith("compile failed: eager")


def test_errors_of_the_computation_are_not_taken_for_compile_failures(monkeypatch):
    import toolkit.inference.compiled as compiled_module

    def out_of_memory(network, **_):
        def run(x):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        return run

    monkeypatch.setattr(compiled_module.torch, "compile", out_of_memory)
    wrapper = compiled_module.CompiledNetwork(torch.nn.Identity(), torch.device("cpu"))
    with pytest.raises(torch.OutOfMemoryError):
        wrapper(torch.zeros(1, 1, 4, 4, 4))
    assert wrapper.failed is None  # compiling stays on


def test_a_smaller_last_batch_reuses_the_first_batch_graph(monkeypatch):
    import toolkit.inference.compiled as compiled_module

    batches = []

    def recording(network, **_):
        def run(x):
            batches.append(x.shape[0])
            return [network(x), network(x)[:, :1]]  # like deep supervision: a list of outputs

        return run

    monkeypatch.setattr(compiled_module.torch, "compile", recording)
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    wrapper = compiled_module.CompiledNetwork(conv, torch.device("cpu"))
    x = torch.randn(4, 1, 6, 6, 6)
    full = wrapper(x)
    part = wrapper(x[:3])
    assert batches == [4, 4]
    assert [o.shape[0] for o in part] == [3, 3]
    assert torch.allclose(part[0], full[0][:3]) and torch.allclose(part[1], full[1][:3])


def test_compile_is_skipped_without_a_compiler(model_3d, monkeypatch):
    import toolkit.inference.compiled as compiled_module

    monkeypatch.setattr(compiled_module.shutil, "which", lambda name: None)
    predictor = Predictor.from_model_dir(model_3d, ModelOptions(device="cpu", compile=True))
    assert not predictor.compiled and "compiled" not in predictor.describe()
