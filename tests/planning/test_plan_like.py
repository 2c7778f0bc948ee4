"""``toolkit plan DATASET --like SOURCE``: the source's network, this dataset's data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import planning_golden as golden
import pytest

from toolkit.cli import main
from toolkit.core.fingerprint import IntensityStats
from toolkit.core.plans import Plans
from toolkit.errors import ToolkitError
from toolkit.planning.planner import plan_experiment
from toolkit.planning.rules import median_resampled_shape
from toolkit.planning.stage import plan_like
from toolkit.planning.transfer import transfer_plans
from toolkit.workspace import DatasetPaths

NETWORK_FIELDS = (
    "data_identifier",
    "spatial_dims",
    "target_spacing",
    "patch_size",
    "batch_size",
    "architecture",
    "resampling",
    "batch_dice",
    "deep_supervision_scales",
    "previous_stage",
    "next_stage",
)


def small_ct():
    """A CT dataset of its own: other spacings, shapes, intensities and labels than large_ct."""
    spacings = [[1.5 + (i % 3) * 0.5, 0.8, 0.8] for i in range(30)]
    shapes = [[120 + (7 * i) % 40, 256, 256] for i in range(30)]
    fp = golden.fingerprint(spacings, shapes, labels=("kidney", "cyst", "tumour"), channels=("CT",))
    stats = IntensityStats(
        mean=80.0, std=45.0, median=75.0, min=-100.0, max=400.0, percentile_00_5=-50.0,
        percentile_99_5=300.0,
    )  # fmt: skip
    return replace(fp, dataset_name="Target", intensity=[stats])


def test_transferred_plans_have_the_sources_network_and_the_targets_data():
    source = plan_experiment(golden.large_ct())
    target = small_ct()
    own = plan_experiment(target)
    moved = transfer_plans(source, target, "LiTS")
    assert set(moved.configurations) == set(source.configurations)
    assert "3d_cascade_fullres" in moved.configurations
    for name, config in moved.configurations.items():
        for field in NETWORK_FIELDS:
            assert getattr(config, field) == getattr(source.configurations[name], field), field
        # this dataset's CT statistics, not the source's
        assert config.normalization == own.configurations["2d"].normalization
        assert config.normalization[0].mean == 80.0
    assert moved.transpose_forward == source.transpose_forward
    assert moved.labels == target.labels and moved.channel_names == target.channel_names
    assert moved.num_classes == 4 != source.num_classes
    assert moved.original_median_shape == own.original_median_shape
    assert moved.original_median_spacing == own.original_median_spacing
    # the median shape at the source's target spacing, measured on this dataset
    for config in moved.configurations.values():
        spacing = [config.target_spacing[moved.transpose_backward[a]] for a in range(3)]
        median = median_resampled_shape(target.spacings, target.shapes_after_crop, spacing)
        assert config.median_shape == [round(median[a]) for a in moved.transpose_forward]
    assert moved.configurations["3d_fullres"].median_shape == [100, 263, 263]
    assert moved.planner["transferred_from"] == "LiTS"
    assert moved.dataset_name == "Target"
    assert Plans.from_dict(moved.to_dict()) == moved


def test_a_different_channel_count_is_a_one_line_error():
    source = plan_experiment(golden.multimodal_masked())
    with pytest.raises(ToolkitError) as error:
        transfer_plans(source, golden.hippocampus(), "BraTS")
    message = error.value.one_line()
    assert "cannot share a network" in message and "\n" not in message
    assert "BraTS has 4 input channel(s) (FLAIR, T1w, t1gd, T2w)" in message
    assert "has 1 (MRI)" in message


def test_a_3d_plan_does_not_fit_2d_images():
    source = plan_experiment(golden.hippocampus())
    with pytest.raises(ToolkitError, match="planned for 3D images .*2D"):
        transfer_plans(source, golden.two_dimensional(), "Hippocampus")
    # a 2D plan fits 3D images: its network runs on slices
    flat = plan_experiment(golden.two_dimensional())
    moved = transfer_plans(flat, golden.hippocampus(), "Flat")
    assert list(moved.configurations) == ["2d"]


def workspace_with(tmp_path):
    source = DatasetPaths(tmp_path / "ws" / "LiTS")
    plan_experiment(golden.large_ct()).save(source.plans_json)
    target = DatasetPaths(tmp_path / "ws" / "Target")
    small_ct().save(target.fingerprint_json)
    return source, target


def test_plan_like_a_workspace_dataset_a_plans_file_or_a_folder(tmp_path):
    source, target = workspace_with(tmp_path)
    by_name = plan_like(target, "LiTS", tmp_path / "ws")
    assert Plans.load(target.plans_json) == by_name
    assert by_name.dataset_name == "Target"
    by_file = plan_like(target, str(source.plans_json))
    by_folder = plan_like(target, str(source.root))
    assert by_file.configurations == by_folder.configurations == by_name.configurations
    assert by_file.planner["transferred_from"] == str(source.plans_json)


def test_cli_plan_like(tmp_path, capsys):
    _, target = workspace_with(tmp_path)
    ws = str(tmp_path / "ws")
    with pytest.raises(SystemExit) as done:
        main(["plan", "Target", "-w", ws, "--like", "LiTS"])
    assert (done.value.code or 0) == 0
    assert Plans.load(target.plans_json).planner["transferred_from"] == "LiTS"
    with pytest.raises(SystemExit) as done:
        main(["plan", "Target", "-w", ws, "--like", "LiTS", "--preset", "cpu"])
    assert done.value.code == 2 and "leave out --preset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["plan", "Target", "-w", ws, "--like", "Nowhere"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "toolkit plan Nowhere" in err


def test_plan_like_nnunet_v2_plans_with_their_dataset_json(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "inference"))
    from test_nnunet_v2 import DATASET_JSON, nnunet_plans_json

    folder = tmp_path / "nnUNet_preprocessed" / "Dataset990_Synth"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(nnunet_plans_json()))
    target = DatasetPaths(tmp_path / "ws" / "Target")
    fingerprint = replace(small_ct(), channel_names={"0": "CT", "1": "T2"})
    replace(fingerprint, intensity=fingerprint.intensity * 2).save(target.fingerprint_json)
    with pytest.raises(ToolkitError, match="dataset.json"):
        plan_like(target, str(folder / "plans.json"))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    moved = plan_like(target, str(folder))
    assert moved.configurations["3d_fullres"].patch_size == [20, 48, 40]
    assert moved.transpose_forward == [0, 2, 1] and moved.labels == small_ct().labels
    assert moved.configurations["3d_fullres"].normalization[0].mean == 80.0
