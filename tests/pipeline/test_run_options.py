import sys
import types

import pytest

from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.errors import ToolkitError
from toolkit.pipeline.presets import PRESETS
from toolkit.pipeline.runner import RunOptions, Stages
from toolkit.workspace import DatasetPaths


def test_precision_is_checked_before_anything_runs():
    assert RunOptions(precision="bf16").check().precision == "bf16"
    with pytest.raises(ToolkitError, match="--precision must be one of auto, fp32, bf16, fp16"):
        RunOptions(precision="fp8").check()


def test_demo_preset_trains_one_configuration_on_two_folds_without_validation_mirroring():
    demo = PRESETS["demo"]
    assert demo.configs == ("3d_fullres",) and demo.folds == (0, 1)  # a partial CV, said so
    assert not demo.validation_mirroring and demo.plan_preset == "cpu"
    assert PRESETS["paper"].epochs == 1000 and PRESETS["paper"].iters_per_epoch == 250


def test_loggers_are_checked_before_anything_runs(monkeypatch):
    assert RunOptions(loggers=("tensorboard",)).check().loggers == ("tensorboard",)
    with pytest.raises(ToolkitError, match="--logger must be tensorboard or mlflow"):
        RunOptions(loggers=("wandb",)).check()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not installed
    with pytest.raises(ToolkitError, match=r"pip install 'toolkit\[mlflow\]'"):
        RunOptions(loggers=("mlflow",)).check()


def test_loggers_reach_the_trainings_and_stay_out_of_their_keys(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    arch = Architecture([4, 8], [[3] * 3] * 2, [[1] * 3, [2] * 3], [1, 1], [1])
    cfg = Configuration(
        "3d_fullres",
        "3d_fullres",
        3,
        [1.0] * 3,
        [8] * 3,
        [8] * 3,
        2,
        arch,
        [Normalization("zscore")],
    )
    plans = Plans(
        "X",
        {"0": "MR"},
        {"background": 0, "a": 1},
        [0, 1],
        [0, 1],
        [1.0] * 3,
        [8] * 3,
        {"3d_fullres": cfg},
    )
    paths = DatasetPaths(tmp_path / "X")

    def tasks(**changes):
        stages = Stages(paths, RunOptions(folds=(0,), quiet=True, **changes))
        return stages.training_tasks(plans, ["3d_fullres"], {"3d_fullres": "preprocessed"})

    [plain], [logged] = tasks(), tasks(loggers=("tensorboard",))
    assert logged.loggers == ("tensorboard",) and plain.loggers == ()
    assert logged.key == plain.key
