"""run-all with two planners side by side (the plain U-Net and the residual-encoder U-Net M):
both train on the same folds, evaluation compares both and their ensemble, and a ResEnc
configuration is selected and exported like a plain one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_run_all import OPTIONS, _make_dataset
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.container import wheels
from toolkit.core.plans import dataset_plans
from toolkit.core.selection import Selection
from toolkit.evaluation.stage import EvaluationOptions, evaluate_dataset, select_dataset
from toolkit.nets.residual_unet import ResidualEncoderUNet
from toolkit.nets.unet import build_network
from toolkit.pipeline.runner import RunOptions, run_all
from toolkit.workspace import DatasetPaths, ExportPaths

pytestmark = pytest.mark.slow

BOTH = replace(OPTIONS, configs=("3d_fullres",), planners=("default", "resenc-m"))


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    paths = _make_dataset(tmp_path_factory.mktemp("resenc"))
    summary = run_all(paths, BOTH)
    return paths, summary


def test_both_planners_train_on_the_same_folds_and_are_compared(side_by_side):
    paths, summary = side_by_side
    plans = dataset_plans(paths)
    resenc = plans.configuration("3d_fullres-resenc-m")
    assert resenc.architecture.network == "residual_encoder" and resenc.planner == "resenc-m"
    assert resenc.data_identifier == "3d_fullres"  # the plain one's preprocessed data
    assert plans.configuration("3d_fullres").architecture.network == "plain"
    for stage in ("train:3d_fullres:0", "train:3d_fullres-resenc-m:1", "preprocess:3d_fullres"):
        assert stage in summary.ran
    assert "preprocess:3d_fullres-resenc-m" not in summary.ran
    # a ResEnc checkpoint holds the residual network under nnU-Net's names
    checkpoint = paths.fold_dir("3d_fullres-resenc-m", 0) / "checkpoint_final.pt"
    assert checkpoint.is_file()
    network = build_network(plans, resenc, deep_supervision=False)
    assert isinstance(network, ResidualEncoderUNet)
    bootstrap = json.loads(paths.bootstrap_json.read_text())
    text = json.dumps(bootstrap)
    for candidate in ("3d_fullres", "3d_fullres-resenc-m", "3d_fullres+3d_fullres-resenc-m"):
        assert f'"{candidate}"' in text
    summary_json = json.loads(paths.evaluation_summary_json.read_text())
    assert "3d_fullres-resenc-m" in json.dumps(summary_json)
    report = (paths.evaluation / "report.md").read_text()
    assert "3d_fullres-resenc-m" in report


def test_a_resenc_configuration_is_selected_and_exported(side_by_side, tmp_path, monkeypatch):
    import shutil

    source, _ = side_by_side
    shutil.copytree(source.root, tmp_path / "ws" / source.name)
    paths = DatasetPaths(tmp_path / "ws" / source.name)
    evaluate_dataset(
        paths,
        EvaluationOptions(folds=[0, 1], configurations=["3d_fullres-resenc-m"]),
        1,
        quiet=True,
    )
    select_dataset(paths, 1, quiet=True)
    selection = Selection.load(paths.selection_json)
    assert selection.candidate == "3d_fullres-resenc-m"
    monkeypatch.setattr(wheels, "runtime_requirements", lambda device, **_: ["numpy==2.4.6"])
    result = CliRunner().invoke(
        app, ["export-container", paths.name, "-w", str(tmp_path / "ws"), "--no-build", "-q"]
    )
    assert result.exit_code == 0, result.output
    export = ExportPaths(paths.export)
    record = json.loads(export.record.read_text())
    assert record["built"] is False and record["test_run"]["identical"] is True
    bundle = DatasetPaths(export.model)  # the workspace's layout inside the image
    assert (bundle.model_dir("3d_fullres-resenc-m") / "plans.json").is_file()
    assert not bundle.model_dir("3d_fullres").exists()


def test_planner_and_like_exclude_each_other():
    from toolkit.errors import ToolkitError

    with pytest.raises(ToolkitError, match="--planner"):
        RunOptions(planners=("resenc-l",), like="Other").check()
    with pytest.raises(ToolkitError, match="--planner must be one of"):
        RunOptions(planners=("resenc-s",)).check()
