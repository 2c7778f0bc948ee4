"""The torch-free predictor: ONNX networks run by ONNX Runtime and OpenVINO give the torch
backend's labels (Dice >= 0.999 per class), for plain, region, cascade, 2D and nnU-Net v2
models; a whole prediction runs with torch unimportable."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import make_case, make_plans, save_model_dir, write_raw_dataset

from toolkit.errors import ToolkitError
from toolkit.inference.options import ModelOptions
from toolkit.inference.runtime import RuntimePredictor, is_onnx_model_dir, load_predictor
from toolkit.inference.runtimes import RUNTIMES, choose_backend
from toolkit.inference.stage import PredictOptions, run_predict
from toolkit.io.images import read_image, write_image
from toolkit.modelzip.stage import (
    ModelExportOptions,
    export_model,
    export_model_folder,
    import_model,
)
from toolkit.workspace import DatasetPaths, channel_file

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

REPO = Path(__file__).resolve().parents[2]
MIN_DICE = 0.999


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    scores = {}
    for value in sorted(set(np.unique(a)) | set(np.unique(b)) - {0}):
        x, y = a == value, b == value
        scores[int(value)] = 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())
    return scores


def assert_same_labels(expected: np.ndarray, got: np.ndarray, what: str) -> None:
    scores = dice_per_class(expected, got)
    assert scores, f"{what}: no foreground at all, the comparison would be empty"
    assert min(scores.values()) >= MIN_DICE, f"{what}: Dice per class {scores}"


def predict(image: Path, out: Path, backend: str | None, **where) -> np.ndarray:
    options = PredictOptions(device="cpu", precision="fp32", quiet=True, backend=backend)
    run_predict(image, out, options, **where)
    (written,) = sorted(out.glob("*.nii.gz"))
    return read_image(written)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dataset of two folds, and its ONNX export imported into another workspace."""
    root = tmp_path_factory.mktemp("runtime")
    paths = DatasetPaths(root / "src" / "Synth")
    write_raw_dataset(paths.raw, cases=2, test_cases=0)
    plans = make_plans()
    plans.save(paths.plans_json)
    save_model_dir(paths.model_dir("3d_fullres"), plans, "3d_fullres", folds=(0, 1))
    archive = root / "onnx.zip"
    export_model(
        paths,
        archive,
        ModelExportOptions(configurations=["3d_fullres"], network_format="onnx"),
    )
    imported = import_model(archive, root / "ws")
    return paths, imported, archive


def test_the_onnx_archive_installs_onnx_folds(exported):
    paths, imported, archive = exported
    model_dir = imported.paths.model_dir("3d_fullres")
    assert is_onnx_model_dir(model_dir) and not is_onnx_model_dir(paths.model_dir("3d_fullres"))
    spec = json.loads((model_dir / "fold_1" / "network.json").read_text())
    assert spec["input_name"] == "image" and spec["output_name"] == "logits"
    assert spec["input_shape"] == ["batch", 1, 16, 32, 32] and spec["mirror_axes"] is None
    assert not list(model_dir.rglob("*.pt"))


@pytest.mark.parametrize("backend", RUNTIMES)
def test_runtime_labels_equal_the_torch_labels(exported, backend, tmp_path):
    paths, imported, _ = exported
    image = paths.images_tr / channel_file("synth_001", 0)
    expected = predict(image, tmp_path / "torch", "torch", dataset=str(paths.root))
    got = predict(
        image, tmp_path / backend, backend, dataset="Synth", workspace=imported.paths.root.parent
    )
    assert_same_labels(expected, got, backend)


def test_the_backend_is_chosen_and_refused_with_one_line(exported):
    paths, imported, _ = exported
    assert choose_backend(None, onnx_model=False) == "torch"
    assert choose_backend(None, onnx_model=True) == "openvino"
    assert choose_backend(None, onnx_model=True, installed=lambda b: b != "openvino") == (
        "onnxruntime"
    )
    with pytest.raises(ToolkitError, match="neither openvino nor onnxruntime"):
        choose_backend(None, onnx_model=True, installed=lambda b: False)
    with pytest.raises(ToolkitError, match="--backend must be one of"):
        choose_backend("tensorrt", onnx_model=True)
    onnx_dir = imported.paths.model_dir("3d_fullres")
    with pytest.raises(ToolkitError, match="--backend torch cannot run"):
        load_predictor(onnx_dir, ModelOptions(backend="torch"))
    with pytest.raises(ToolkitError, match="export-model DATASET --format onnx"):
        load_predictor(paths.model_dir("3d_fullres"), ModelOptions(backend="onnxruntime"))
    with pytest.raises(ToolkitError, match="--precision bf16 is not available"):
        load_predictor(onnx_dir, ModelOptions(backend="onnxruntime", precision="bf16"))
    assert isinstance(load_predictor(onnx_dir, ModelOptions()), RuntimePredictor)


BLOCK_TORCH = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Blocker())
from toolkit.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
sys.exit(code)
"""


@pytest.mark.parametrize("backend", RUNTIMES)
def test_a_whole_prediction_runs_with_torch_unimportable(exported, backend, tmp_path):
    paths, imported, _ = exported
    image = paths.images_tr / channel_file("synth_000", 0)
    out = tmp_path / "lean"
    args = ["predict", "-i", str(image), "-o", str(out), "-d", "Synth"]
    args += ["-w", str(imported.paths.root.parent), "--backend", backend]
    args += ["--precision", "fp32", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (written,) = sorted(out.glob("*.nii.gz"))
    in_process = predict(
        image, tmp_path / "in", backend, dataset="Synth", workspace=imported.paths.root.parent
    )
    assert np.array_equal(read_image(written)[0], in_process)
    # the blocker works: the torch predictor cannot run there
    torch_args = [a for a in args if a not in ("--backend", backend)] + ["--backend", "torch"]
    torch_args[torch_args.index("-d") + 1 : torch_args.index("-d") + 2] = [str(paths.root)]
    torch_args[torch_args.index("-w") : torch_args.index("-w") + 2] = []
    failed = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *torch_args], capture_output=True, text=True, env=env
    )
    assert failed.returncode != 0 and "torch is blocked" in failed.stderr


def _region_plans():
    return dataclasses.replace(
        make_plans(),
        labels={"background": 0, "organ": [1, 2], "lesion": [2]},
        regions_class_order=[1, 2],
    )


MODELS = {
    # name: (plans, configuration to predict with, configurations to save)
    "regions": (_region_plans, "3d_fullres", ("3d_fullres",)),
    "cascade": (
        lambda: make_plans(cascade=True),
        "3d_cascade_fullres",
        ("3d_lowres", "3d_cascade_fullres"),
    ),
    "2d": (lambda: make_plans(spatial_dims=2, patch=(32, 32)), "2d", ("2d",)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_region_cascade_and_2d_models_agree_with_torch(kind, tmp_path):
    make, config, saved = MODELS[kind]
    plans = make()
    source = DatasetPaths(tmp_path / "src" / "Synth")
    for seed, name in enumerate(saved):
        save_model_dir(source.model_dir(name), plans, name, seed=seed)
    export_model_folder(source.model_dir(config), tmp_path / "m.zip")
    imported = import_model(tmp_path / "m.zip", tmp_path / "ws")
    image, _, geometry = make_case(5)
    case = tmp_path / "in" / "c_0000.nii.gz"
    write_image(case, image, geometry)
    expected = predict(case, tmp_path / "torch", "torch", model=source.model_dir(config))
    got = predict(
        case,
        tmp_path / "ov",
        "openvino",
        model=imported.paths.model_dir(config),
    )
    assert_same_labels(expected, got, kind)


def test_an_nnunet_v2_model_folder_exports_and_agrees_with_torch(tmp_path):
    from test_nnunet_v2 import write_fake_nnunet_model

    model = write_fake_nnunet_model(
        tmp_path / "Dataset990_Synth" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    )
    done = export_model_folder(model, tmp_path / "nnunet-onnx.zip")
    assert done.manifest.network_format == "onnx" and done.manifest.folds == [0]
    imported = import_model(tmp_path / "nnunet-onnx.zip", tmp_path / "ws")
    spec = json.loads(
        (imported.paths.model_dir("3d_fullres") / "fold_0" / "network.json").read_text()
    )
    assert spec["mirror_axes"] == [1, 2]  # the checkpoint's allowed axes travel along
    image, _, geometry = make_case(3)
    folder = tmp_path / "in"
    write_image(folder / "c_0000.nii.gz", image, geometry)
    write_image(folder / "c_0001.nii.gz", image / 100, geometry)
    expected = predict(folder / "c_0000.nii.gz", tmp_path / "torch", "torch", model=model)
    for backend in RUNTIMES:
        got = predict(
            folder / "c_0000.nii.gz",
            tmp_path / backend,
            backend,
            dataset="Dataset990_Synth",
            workspace=tmp_path / "ws",
        )
        assert_same_labels(expected, got, backend)


# --- docs/how-to/deploy-without-torch.md: its commands and its Python --------------------

DOC = REPO / "docs" / "how-to" / "deploy-without-torch.md"


def _code_blocks(language: str) -> list[str]:
    text = DOC.read_text()
    parts = text.split("```")
    return [
        parts[i][len(language) :] for i in range(1, len(parts), 2) if parts[i].startswith(language)
    ]


def test_the_page_commands_use_options_their_help_lists():
    from typer.testing import CliRunner

    from toolkit.cli import app

    commands = [
        line.split()
        for block in _code_blocks("\n")
        for line in block.splitlines()
        if line.startswith("toolkit ")
    ]
    assert len(commands) >= 6
    for words in commands:
        help_text = CliRunner().invoke(app, [words[1], "--help"], env={"COLUMNS": "300"}).output
        for word in words[2:]:
            if word.startswith("--"):
                assert word in help_text, f"{' '.join(words)}: {word} is not an option"


def test_the_page_python_loads_an_exported_fold(exported):
    _, imported, _ = exported
    (code,) = _code_blocks("python")
    folder = imported.paths.model_dir("3d_fullres") / "fold_0"
    code = code.replace(
        '"deploy-workspace/Task04_Hippocampus/models/3d_fullres/fold_0"', repr(str(folder))
    )
    assert repr(str(folder)) in code
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["logits"].shape == (2, 3, 16, 32, 32)


def test_the_lean_modules_import_no_torch():
    """What the lean image's job imports (wheels.LEAN_ENTRYPOINT_MODULES) loads no torch."""
    from toolkit.container.wheels import LEAN_ENTRYPOINT_MODULES

    code = BLOCK_TORCH.split("from toolkit.cli")[0] + "".join(
        f"import {m}\n" for m in (*LEAN_ENTRYPOINT_MODULES, "toolkit.inference.stage")
    )
    code += "assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
