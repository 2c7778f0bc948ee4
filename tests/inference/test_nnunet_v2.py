"""nnU-Net v2 models: plans and weights mapped onto ours, and predictions that agree with its own."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import make_plans, write_raw_dataset

from toolkit.errors import ToolkitError
from toolkit.inference.files import predict_paths
from toolkit.inference.options import ModelOptions
from toolkit.inference.predictor import Predictor
from toolkit.io.images import read_image
from toolkit.nets import nnunet_v2, nnunet_v2_weights
from toolkit.nets.unet import build_network

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "bench" / "nnunet_v2_reference.py"
NNUNET_PYTHON = Path(
    os.environ.get("TOOLKIT_NNUNET_PYTHON", REPO / "bench" / ".venv-nnunet" / "bin" / "python")
)


def nnunet_plans_json(
    network="dynamic_network_architectures.architectures.unet.PlainConvUNet",
) -> dict:
    arch3d = {
        "network_class_name": network,
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    arch2d = json.loads(
        json.dumps(arch3d).replace("Conv3d", "Conv2d").replace("InstanceNorm3d", "InstanceNorm2d")
    )
    arch2d["arch_kwargs"]["kernel_sizes"] = [[3, 3]] * 3
    arch2d["arch_kwargs"]["strides"] = [[1, 1], [2, 2], [2, 2]]
    common = {
        "preprocessor_name": "DefaultPreprocessor",
        "normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
        "use_mask_for_norm": [False, True],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset990_Synth",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.9, 0.8],
        "original_median_shape_after_transp": [20, 48, 40],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 2, 1],
        "transpose_backward": [0, 2, 1],
        "configurations": {
            "2d": {
                **common,
                "data_identifier": "nnUNetPlans_2d",
                "batch_size": 12,
                "patch_size": [48, 40],
                "median_image_size_in_voxels": [48.0, 40.0],
                "spacing": [0.9, 0.8],
                "architecture": arch2d,
                "batch_dice": True,
            },
            "3d_fullres": {
                **common,
                "data_identifier": "nnUNetPlans_3d_fullres",
                "batch_size": 2,
                "patch_size": [20, 48, 40],
                "median_image_size_in_voxels": [20.0, 48.0, 40.0],
                "spacing": [2.5, 0.9, 0.8],
                "architecture": arch3d,
            },
            "3d_lowres": {
                **common,
                "data_identifier": "nnUNetPlans_3d_lowres",
                "batch_size": 2,
                "patch_size": [20, 32, 32],
                "median_image_size_in_voxels": [18, 30, 28],
                "spacing": [2.8, 1.4, 1.2],
                "architecture": arch3d,
                "next_stage": ["3d_cascade_fullres"],
            },
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 260.5,
                "mean": 129.2,
                "median": 121.5,
                "min": 75.1,
                "percentile_00_5": 90.9,
                "percentile_99_5": 239.3,
                "std": 31.2,
            },
            "1": {
                "max": 2.0,
                "mean": 1.0,
                "median": 1.0,
                "min": 0.0,
                "percentile_00_5": 0.1,
                "percentile_99_5": 1.9,
                "std": 0.5,
            },
        },
    }


DATASET_JSON = {
    "channel_names": {"0": "CT", "1": "T2"},
    "labels": {"background": 0, "organ": 1, "lesion": 2},
    "numTraining": 8,
    "file_ending": ".nii.gz",
}


def nnunet_names(state: dict) -> dict:
    """Our UNet's state dict under PlainConvUNet's names, with its duplicate aliases."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "encoder":
            s, b, kind, param = parts[1:]
            base = f"encoder.stages.{s}.0.convs.{b}"
            out[f"{base}.{kind}.{param}"] = value
            out[f"{base}.all_modules.{0 if kind == 'conv' else 1}.{param}"] = value
            out[f"decoder.{base}.{kind}.{param}"] = value
        elif parts[0] == "decoder":
            d, b, kind, param = parts[1:]
            out[f"decoder.stages.{d}.convs.{b}.{kind}.{param}"] = value
            out[
                f"decoder.stages.{d}.convs.{b}.all_modules.{0 if kind == 'conv' else 1}.{param}"
            ] = value
        elif parts[0] == "upsamples":
            out[f"decoder.transpconvs.{parts[1]}.{parts[2]}"] = value
        else:
            out[f"decoder.seg_layers.{parts[1]}.{parts[2]}"] = value
    return out


def test_plans_are_converted():
    plans = nnunet_v2.convert_plans(nnunet_plans_json(), DATASET_JSON)
    assert set(plans.configurations) == {"2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"}
    full = plans.configuration("3d_fullres")
    assert full.patch_size == [20, 48, 40] and full.target_spacing == [2.5, 0.9, 0.8]
    assert full.architecture.features_per_stage == [4, 8, 16] and full.architecture.strides[1] == [
        1,
        2,
        2,
    ]
    ct, z = full.normalization
    assert (ct.scheme, ct.mean, ct.std, ct.lower_bound, ct.upper_bound) == (
        "ct",
        129.2,
        31.2,
        90.9,
        239.3,
    )
    assert (z.scheme, z.use_nonzero_mask) == ("zscore", True)
    assert (
        full.resampling.image_order,
        full.resampling.label_order,
        full.resampling.probability_order,
        full.resampling.coarse_axis_order,
    ) == (3, 1, 1, 0)
    assert full.deep_supervision_scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5]]
    two = plans.configuration("2d")
    assert (
        two.spatial_dims == 2
        and two.target_spacing == [2.5, 0.9, 0.8]
        and two.median_shape == [20, 48, 40]
    )
    cascade = plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and cascade.patch_size == [20, 48, 40]
    assert plans.configuration("3d_lowres").next_stage == "3d_cascade_fullres"
    # the plans' lists are in transposed order; ours keep the original order for the medians
    assert plans.transpose_forward == [0, 2, 1] and plans.original_median_spacing == [2.5, 0.8, 0.9]
    assert plans.num_classes == 3 and plans.num_input_channels == 2


def test_unsupported_plans_are_refused_with_the_reason():
    plans = nnunet_v2.convert_plans(
        nnunet_plans_json(network="dynamic_network_architectures.architectures.unet.ResidualUNet"),
        DATASET_JSON,
    )
    assert plans.configurations == {}
    assert (
        "only PlainConvUNet and ResidualEncoderUNet" in plans.planner["not_converted"]["3d_fullres"]
    )
    other = nnunet_plans_json()
    other["configurations"]["3d_fullres"]["normalization_schemes"][1] = "MyNormalization"
    assert (
        "MyNormalization"
        in nnunet_v2.convert_plans(other, DATASET_JSON).planner["not_converted"]["3d_fullres"]
    )
    # every scheme of nnU-Net v2 converts
    other["configurations"]["3d_fullres"]["normalization_schemes"] = [
        "RescaleTo01Normalization",
        "RGBTo01Normalization",
    ]
    converted = nnunet_v2.convert_plans(other, DATASET_JSON).configuration("3d_fullres")
    assert [n.scheme for n in converted.normalization] == ["rescale_to_0_1", "rgb_to_0_1"]
    # models trained on PNG/BMP/TIFF files: their reader gives our axis order
    natural = nnunet_v2.convert_plans(
        {**other, "image_reader_writer": "NaturalImage2DIO"}, DATASET_JSON
    )
    assert "3d_fullres" in natural.configurations
    regions = nnunet_v2.convert_plans(
        nnunet_plans_json(),
        {
            **DATASET_JSON,
            "labels": {"background": 0, "whole": [1, 2], "inner": [2]},
            "regions_class_order": [1, 2],
        },
    )
    assert regions.label_model().names == {1: "whole", 2: "inner"}
    assert regions.num_classes == 2 and regions.regions_class_order == [1, 2]
    with pytest.raises(ToolkitError, match="highest value"):
        nnunet_v2.convert_plans(
            nnunet_plans_json(),
            {**DATASET_JSON, "labels": {"background": 0, "ignore": 1, "a": 2}},
        )
    with pytest.raises(ToolkitError, match="NibabelIO"):
        nnunet_v2.convert_plans(
            {**nnunet_plans_json(), "image_reader_writer": "NibabelIO"}, DATASET_JSON
        )


def test_weights_are_renamed_and_load_strictly():
    plans = nnunet_v2.convert_plans(nnunet_plans_json(), DATASET_JSON)
    for name in ("3d_fullres", "2d"):
        configuration = plans.configuration(name)
        torch.manual_seed(0)
        source = build_network(plans, configuration, deep_supervision=False)
        converted = nnunet_v2_weights.convert_state_dict(nnunet_names(source.state_dict()))
        assert converted.keys() == source.state_dict().keys()
        target = build_network(plans, configuration, deep_supervision=False)
        target.load_state_dict(converted, strict=True)
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value)
    with pytest.raises(ToolkitError, match="no counterpart"):
        nnunet_v2_weights.convert_state_dict({"encoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ToolkitError, match="pooling"):
        nnunet_v2_weights.convert_state_dict(
            {"encoder.stages.1.1.convs.0.conv.weight": torch.zeros(1)}
        )


def write_fake_nnunet_model(folder: Path, seed=0) -> Path:
    """An nnU-Net v2 model folder as its trainer writes it (numpy scalars in the pickle included)."""
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(nnunet_plans_json()))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (folder / "dataset_fingerprint.json").write_text("{}")
    plans = nnunet_v2.convert_plans(nnunet_plans_json(), DATASET_JSON)
    torch.manual_seed(seed)
    network = build_network(plans, plans.configuration("3d_fullres"), deep_supervision=True)
    (folder / "fold_0").mkdir()
    torch.save(
        {
            "network_weights": nnunet_names(network.state_dict()),
            "init_args": {"configuration": "3d_fullres", "fold": 0},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (1, 2),
            "logging": {"mean_fg_dice": [np.float32(0.5)], "lrs": [np.float64(0.01)]},
            "current_epoch": 1,
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def test_an_nnunet_model_folder_is_detected_and_loaded(tmp_path):
    folder = write_fake_nnunet_model(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    assert nnunet_v2.is_nnunet_v2_model_dir(folder)
    assert not nnunet_v2.is_nnunet_v2_model_dir(tmp_path)
    predictor = Predictor.from_model_dir(folder, ModelOptions(device="cpu"))
    assert predictor.configuration.name == "3d_fullres"
    assert predictor.mirror_axes == (1, 2)  # the checkpoint's allowed axes, not all three
    assert not nnunet_v2.is_nnunet_v2_model_dir(make_plans_dir(tmp_path / "ours"))


def test_an_nnunet_model_folder_trained_on_fold_all_is_loaded(tmp_path):
    folder = write_fake_nnunet_model(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    (folder / "fold_0").rename(folder / "fold_all")
    assert nnunet_v2.is_nnunet_v2_model_dir(folder)
    for folds in (["all"], None):  # named, or the only fold there is
        predictor = Predictor.from_model_dir(folder, ModelOptions(device="cpu", folds=folds))
        assert predictor.configuration.name == "3d_fullres"


def make_plans_dir(folder: Path) -> Path:
    folder.mkdir()
    make_plans().save(folder / "plans.json")
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    return folder


# --------------------------------------------------------------------------- the reference itself


def _nnunet_available() -> str | None:
    if not NNUNET_PYTHON.is_file():
        return f"nnU-Net v2 is not installed: no {NNUNET_PYTHON} (make it with `make reference`)"
    probe = subprocess.run(
        [str(NNUNET_PYTHON), "-c", "import nnunetv2"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"nnunetv2 does not import in {NNUNET_PYTHON}: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'unknown error'}"
    return None


def _reference(*args: str, timeout: int = 900) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [str(NNUNET_PYTHON), str(RUNNER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"nnU-Net v2 {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_nnunet_v2_trained_model_agrees_with_its_own_predictor(tmp_path):
    """A model trained by nnU-Net v2 for one epoch, predicted by both tools: Dice >= 0.99 per class."""
    reason = _nnunet_available()
    if reason is not None:
        pytest.skip(reason)
    raw = write_raw_dataset(tmp_path / "raw", cases=8, test_cases=3)
    root = tmp_path / "nnunet"
    _reference(
        "prepare",
        "--root",
        str(root),
        "--raw",
        str(raw),
        "--dataset-id",
        "990",
        "--configurations",
        "3d_fullres",
        "--width-divisor",
        "8",
    )
    model = Path(
        _reference(
            "train",
            "--root",
            str(root),
            "--dataset-id",
            "990",
            "--configuration",
            "3d_fullres",
            "--epochs",
            "1",
            "--iterations",
            "80",
        )["model"]
    )
    reference_out = tmp_path / "reference"
    _reference(
        "predict",
        "--model",
        str(model),
        "--input",
        str(raw / "imagesTs"),
        "--output",
        str(reference_out),
        "--folds",
        "0",
    )

    ours_out = tmp_path / "ours"
    predictor = Predictor.from_model_dir(model, ModelOptions(folds=[0], device="cpu"))
    predict_paths([predictor], raw / "imagesTs", ours_out, quiet=True)
    cases = sorted(p.name for p in reference_out.glob("*.nii.gz"))
    assert len(cases) == 3
    foreground_seen = set()
    for name in cases:
        theirs, geometry_theirs = read_image(reference_out / name)
        ours, geometry_ours = read_image(ours_out / name)
        assert geometry_ours.matches(geometry_theirs) is None
        for label in (1, 2):
            foreground_seen.update({label} if (theirs == label).any() else set())
            score = dice(ours == label, theirs == label)
            assert score >= 0.99, (
                f"{name} class {label}: Dice {score:.4f} between the toolkit and nnU-Net v2"
            )
    assert foreground_seen, (
        "the trained model predicts no foreground at all: the comparison would be empty"
    )
    print(
        f"nnU-Net v2 agreement on {len(cases)} cases, classes seen: {sorted(foreground_seen)}",
        file=sys.stderr,
    )
    _onnx_runtimes_agree_with_torch(model, raw / "imagesTs", ours_out, tmp_path)


def _onnx_runtimes_agree_with_torch(model: Path, images: Path, torch_out: Path, tmp_path) -> None:
    """The trained nnU-Net v2 folder exported as ONNX: OpenVINO and ONNX Runtime in float32
    give the torch backend's labels (Dice >= 0.999 per class)."""
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "openvino")):
        return  # the deploy extra is not installed: tests/inference/test_runtime.py skips too
    from toolkit.inference.runtime import RuntimePredictor
    from toolkit.modelzip.stage import export_model_folder, import_model

    export_model_folder(model, tmp_path / "onnx.zip", [0])
    imported = import_model(tmp_path / "onnx.zip", tmp_path / "onnx-ws")
    onnx_dir = imported.paths.model_dir("3d_fullres")
    for backend in ("openvino", "onnxruntime"):
        options = ModelOptions(folds=[0], precision="fp32")
        predictor = RuntimePredictor.from_model_dir(onnx_dir, options, backend)
        out = tmp_path / backend
        predict_paths([predictor], images, out, quiet=True)
        for path in sorted(torch_out.glob("*.nii.gz")):
            theirs, ours = read_image(path)[0], read_image(out / path.name)[0]
            for label in (1, 2):
                if (theirs == label).any() or (ours == label).any():
                    score = dice(ours == label, theirs == label)
                    assert score >= 0.999, f"{backend} {path.name} class {label}: Dice {score:.4f}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_nnunet_v2_region_model_agrees_with_its_own_predictor(tmp_path):
    """A region model (BraTS-like regions, regions_class_order) trained by nnU-Net v2 for one
    epoch, predicted by both tools: the same sigmoid probabilities per region (a short training
    may predict no region above 0.5 yet, so the probabilities are what is compared), and
    Dice >= 0.99 per written value wherever nnU-Net v2 predicts it."""
    reason = _nnunet_available()
    if reason is not None:
        pytest.skip(reason)
    from toolkit.convert.stage import convert_task
    from toolkit.synthetic import generate_task
    from toolkit.workspace import DatasetPaths

    task = generate_task("brats", tmp_path / "src", n_cases=8, n_test=3, seed=5, shape=(16, 48, 48))
    paths = DatasetPaths(tmp_path / "Regions")
    convert_task(task, paths, workers=1, quiet=True)  # nnU-Net v2's raw layout, regions kept
    root = tmp_path / "nnunet"
    _reference(
        "prepare",
        "--root",
        str(root),
        "--raw",
        str(paths.raw),
        "--dataset-id",
        "991",
        "--configurations",
        "3d_fullres",
        "--width-divisor",
        "8",
    )
    model = Path(
        _reference(
            "train",
            "--root",
            str(root),
            "--dataset-id",
            "991",
            "--configuration",
            "3d_fullres",
            "--epochs",
            "1",
            "--iterations",
            "80",
        )["model"]
    )
    reference_out = tmp_path / "reference"
    _reference(
        "predict",
        "--model",
        str(model),
        "--input",
        str(paths.images_ts),
        "--output",
        str(reference_out),
        "--folds",
        "0",
        "--save-probabilities",
    )
    predictor = Predictor.from_model_dir(model, ModelOptions(folds=[0], device="cpu"))
    assert predictor.plans.label_model().regions_class_order == (1, 2, 3)
    ours_out = tmp_path / "ours"
    predict_paths([predictor], paths.images_ts, ours_out, save_probabilities=True, quiet=True)
    cases = sorted(p.name for p in reference_out.glob("*.nii.gz"))
    assert len(cases) == 3
    for name in cases:
        case = name[: -len(".nii.gz")]
        with np.load(reference_out / f"{case}.npz") as npz:
            their_probabilities = npz["probabilities"].astype(np.float32)
        with np.load(ours_out / f"{case}.npz") as npz:
            our_probabilities = npz["probabilities"].astype(np.float32)
        assert (
            our_probabilities.shape
            == their_probabilities.shape
            == (3, *our_probabilities.shape[1:])
        )
        assert their_probabilities.max() > 0.01  # sigmoid outputs, not an empty comparison
        difference = np.abs(our_probabilities - their_probabilities)
        assert difference.max() < 0.02 and difference.mean() < 1e-3, (name, difference.max())
        theirs, _ = read_image(reference_out / name)
        ours, _ = read_image(ours_out / name)
        for value in (1, 2, 3):
            if (theirs == value).any():
                score = dice(ours == value, theirs == value)
                assert score >= 0.99, f"{name} value {value}: Dice {score:.4f} against nnU-Net v2"
