"""fingerprint -> plan -> preprocess on small synthetic tasks, through the library and the CLI."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.convert.stage import convert_task
from toolkit.core.fingerprint import Fingerprint
from toolkit.core.plans import dataset_plans
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.fingerprint.stage import extract_fingerprint
from toolkit.io.dataset_json import training_cases
from toolkit.io.images import read_image
from toolkit.io.preprocessed import case_paths, complete_cases, load_case
from toolkit.planning.planner import preset
from toolkit.planning.stage import plan_dataset
from toolkit.preprocessing.case import revert_labels
from toolkit.preprocessing.stage import preprocess_dataset
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

SMALL = {"mr": (10, 32, 32), "ct": (12, 32, 32), "2d": (40, 40)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """kind -> a converted small task (4 training cases). Copy before changing."""
    root = tmp_path_factory.mktemp("stage")
    out = {}
    for kind, shape in SMALL.items():
        task = generate_task(kind, root / "msd", n_cases=4, n_test=0, shape=shape, seed=3)
        paths = DatasetPaths(root / "ws" / task.name)
        convert_task(task, paths, workers=1, quiet=True)
        out[kind] = paths
    return out


@pytest.fixture
def dataset(converted, tmp_path, request):
    source = converted[request.param]
    paths = DatasetPaths(tmp_path / source.name)
    shutil.copytree(source.root, paths.root)
    return paths


def _dice_per_class(paths, plans, config):
    scores = {}
    for files in training_cases(paths):
        _, seg, props = load_case(paths.preprocessed_dir(config.data_identifier), files.case)
        back = revert_labels(np.asarray(seg), props, plans, config)
        original, _ = read_image(files.label)
        assert back.shape == original.shape
        for label in (1, 2):
            a, b = back == label, original == label
            if b.any():
                scores.setdefault(label, []).append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return {k: float(np.mean(v)) for k, v in scores.items()}


@pytest.mark.parametrize("dataset", ["mr", "2d"], indirect=True)
def test_stages_end_to_end(dataset):
    fingerprint = extract_fingerprint(dataset, workers=1, quiet=True)
    assert len(fingerprint.cases) == 4 and Fingerprint.load(dataset.fingerprint_json) == fingerprint
    assert fingerprint.label_voxels()["1"] > 0
    plans = plan_dataset(dataset, preset("cpu"))
    assert plans.planner["preset"] == "cpu"
    results = preprocess_dataset(dataset, workers=1, quiet=True)
    assert all(len(r.done) == 4 for r in results)
    for config in plans.configurations.values():
        folder = dataset.preprocessed_dir(config.data_identifier)
        assert len(complete_cases(folder)) == 4
        data, seg, props = load_case(folder, complete_cases(folder)[0])
        assert data.dtype == np.float32 and data.shape[1:] == seg.shape[1:]
        assert props.class_locations["1"] and props.source["configuration"] == config.name
        # same spacing as the data: the round trip is exact
        assert min(_dice_per_class(dataset, plans, config).values()) >= 0.99


@pytest.mark.parametrize("dataset", ["ct"], indirect=True)
def test_resume_skips_current_cases_and_redoes_stale_ones(dataset):
    extract_fingerprint(dataset, workers=1, quiet=True)
    plan_dataset(dataset, preset("cpu"))
    first = preprocess_dataset(dataset, configurations=["3d_fullres"], workers=2, quiet=True)
    assert len(first[0].done) == 4
    folder = dataset.preprocessed_dir("3d_fullres")
    case = complete_cases(folder)[0]
    # a half-written case (properties missing) is redone, complete ones are skipped
    case_paths(folder, case)[2].unlink()
    again = preprocess_dataset(dataset, configurations=["3d_fullres"], workers=1, quiet=True)
    assert again[0].done == [case] and len(again[0].skipped) == 3
    # a new plan with another spacing makes every case stale
    plans = dataset_plans(dataset)
    plans.configurations["3d_fullres"].target_spacing = [
        s * 1.5 for s in plans.configurations["3d_fullres"].target_spacing
    ]
    plans.save(dataset.plans_json)
    stale = preprocess_dataset(dataset, configurations=["3d_fullres"], workers=1, quiet=True)
    assert len(stale[0].done) == 4
    props = json.loads(case_paths(folder, case)[2].read_text())
    assert props["shape_after_resampling"][1] < props["shape_after_cropping"][1]
    with pytest.raises(ToolkitError, match="3d_lowres"):
        preprocess_dataset(dataset, configurations=["3d_lowres"], workers=1, quiet=True)


@pytest.mark.parametrize("dataset", ["ct"], indirect=True)
def test_cli_commands(dataset):
    runner = CliRunner()
    workspace = str(dataset.root.parent)
    result = runner.invoke(app, ["plan", dataset.name, "-w", workspace])
    assert result.exit_code != 0 and isinstance(result.exception, MissingStageError)
    assert (
        runner.invoke(
            app, ["fingerprint", dataset.name, "-w", workspace, "-j", "1", "-q"]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app, ["plan", dataset.name, "-w", workspace, "--show", "--preset", "cpu"]
    )
    assert result.exit_code == 0, result.output
    for name in dataset_plans(dataset).configurations:
        assert f"{dataset.name}: {name}" in result.output
    assert "patch size" in result.output and "ct" in result.output
    result = runner.invoke(
        app, ["preprocess", dataset.name, "-w", workspace, "-c", "2d", "-j", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert len(complete_cases(dataset.preprocessed_dir("2d"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mr", "ct", "2d"])
def test_labels_survive_the_round_trip_on_the_synthetic_tasks(kind, tmp_path):
    """Default-size synthetic tasks, default plans: labels resampled back to the original geometry.

    MR and 2D data are already at the target spacing (Dice 1). CT cases differ in spacing, so
    each is resampled to the median spacing (down to 0.8x resolution) and back, losing
    partial-volume voxels at the boundary both ways as the method's resampling does: the organ
    keeps Dice >= 0.98 (0.987-0.991 measured), the lesion (200-400 voxels, mostly boundary)
    >= 0.95 (0.968-0.974 measured).
    """
    task = generate_task(kind, tmp_path / "msd", n_cases=6, n_test=0, seed=0)
    paths = DatasetPaths(tmp_path / "ws" / task.name)
    convert_task(task, paths, workers=2, quiet=True)
    extract_fingerprint(paths, workers=2, quiet=True)
    plans = plan_dataset(paths)
    preprocess_dataset(paths, workers=2, quiet=True)
    for config in plans.configurations.values():
        dice = _dice_per_class(paths, plans, config)
        assert dice[1] >= (0.98 if kind == "ct" else 0.99), (config.name, dice)
        assert dice[2] >= (0.95 if kind == "ct" else 0.99), (config.name, dice)
