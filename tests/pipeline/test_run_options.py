import pytest

from toolkit.errors import ToolkitError
from toolkit.pipeline.presets import PRESETS
from toolkit.pipeline.runner import RunOptions


def test_precision_is_checked_before_anything_runs():
    assert RunOptions(precision="bf16").check().precision == "bf16"
    with pytest.raises(ToolkitError, match="--precision must be one of auto, fp32, bf16, fp16"):
        RunOptions(precision="fp8").check()


def test_demo_preset_trains_one_configuration_on_every_fold_without_validation_mirroring():
    demo = PRESETS["demo"]
    assert demo.configs == ("3d_fullres",) and demo.folds is None  # every fold: a full CV
    assert not demo.validation_mirroring and demo.plan_preset == "cpu"
    assert PRESETS["paper"].epochs == 1000 and PRESETS["paper"].iters_per_epoch == 250
