"""The residual-encoder planners: plans equal nnU-Net v2 2.8.1's nnUNetPlannerResEnc{M,L,XL}.

``resenc_golden.json`` holds the reference's own plans of the golden fingerprints
(``planning_golden.py``), made by ``python -m bench.resenc_golden`` with the reference
installed: each planner at its own memory target and at a few others (``--gpu-memory``).
"""

import json
from pathlib import Path

import planning_golden as golden
import pytest

from toolkit.core.plans import configuration_name
from toolkit.errors import ToolkitError
from toolkit.planning.planner import PlannerOptions, plan_experiment, preset
from toolkit.planning.planners import PLANNERS, get_planner

GOLDEN = json.loads((Path(__file__).with_name("resenc_golden.json")).read_text())
CASES = [
    (fingerprint, key)
    for fingerprint, by_planner in sorted(GOLDEN["plans"].items())
    for key in sorted(by_planner)
]
SCHEMES = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none"}


def _data_identifier(reference: str, planner: str) -> str:
    """The reference's ``<plans name>_<configuration>`` as ours."""
    plans_name, _, base = reference.partition("_")
    assert plans_name == (
        "nnUNetPlans" if base in ("2d", "3d_fullres") else get_planner(planner).plans_name
    )
    return configuration_name(base, planner) if base not in ("2d", "3d_fullres") else base


@pytest.mark.parametrize(("fingerprint", "key"), CASES)
def test_plans_equal_the_reference_planner(fingerprint, key):
    reference = GOLDEN["plans"][fingerprint][key]
    planner, _, budget = key.partition("@")
    gpu = None if budget == "default" else float(budget)
    plans = plan_experiment(
        getattr(golden, fingerprint)(), PlannerOptions(planners=(planner,), gpu_memory_gb=gpu)
    )
    assert plans.planner["memory_gb"] == {planner: reference["gpu_memory_target_in_gb"]}
    assert plans.transpose_forward == reference["transpose_forward"]
    names = {configuration_name(base, planner): base for base in reference["configurations"]}
    assert set(plans.configurations) == set(names)
    for name, base in names.items():
        ours, theirs = plans.configurations[name], reference["configurations"][base]
        assert ours.planner == planner
        if base == "3d_cascade_fullres":  # the reference's inherits 3d_fullres
            assert ours.previous_stage == configuration_name(theirs["previous_stage"], planner)
            full = plans.configurations[configuration_name("3d_fullres", planner)]
            assert ours.patch_size == full.patch_size and ours.architecture == full.architecture
            continue
        _same_configuration(ours, theirs, planner)


def _same_configuration(ours, theirs, planner):
    dims = ours.spatial_dims
    a, kw = ours.architecture, theirs["arch_kwargs"]
    where = f"{ours.name}"
    assert ours.data_identifier == _data_identifier(theirs["data_identifier"], planner), where
    assert ours.target_spacing[3 - dims :] == pytest.approx(theirs["spacing"], rel=1e-9), where
    assert ours.median_shape[3 - dims :] == [
        int(round(v)) for v in theirs["median_image_size_in_voxels"]
    ], where
    assert ours.patch_size == theirs["patch_size"], where
    assert ours.batch_size == theirs["batch_size"], where
    assert ours.batch_dice == theirs["batch_dice"], where
    assert [n.scheme for n in ours.normalization] == [
        SCHEMES[s] for s in theirs["normalization_schemes"]
    ]
    assert [n.use_nonzero_mask for n in ours.normalization] == theirs["use_mask_for_norm"], where
    assert ours.resampling.image_order == theirs["resampling_fn_data_kwargs"]["order"]
    assert ours.resampling.label_order == theirs["resampling_fn_seg_kwargs"]["order"]
    assert (
        ours.resampling.probability_order == theirs["resampling_fn_probabilities_kwargs"]["order"]
    )
    assert ours.resampling.coarse_axis_order == theirs["resampling_fn_data_kwargs"]["order_z"]
    family = theirs["network_class_name"].rsplit(".", 1)[-1]
    assert (
        a.network == {"PlainConvUNet": "plain", "ResidualEncoderUNet": "residual_encoder"}[family]
    )
    assert a.n_stages == kw["n_stages"], where
    assert a.features_per_stage == kw["features_per_stage"], where
    assert a.kernel_sizes == kw["kernel_sizes"], where
    assert a.strides == kw["strides"], where
    assert a.encoder_blocks == kw.get("n_blocks_per_stage", kw.get("n_conv_per_stage")), where
    assert a.n_conv_per_stage_decoder == kw["n_conv_per_stage_decoder"], where
    next_stage = theirs.get("next_stage")
    assert ours.next_stage == (configuration_name(next_stage, planner) if next_stage else None)


def test_every_planner_and_its_own_budget_is_in_the_golden():
    keys = {key for by_planner in GOLDEN["plans"].values() for key in by_planner}
    assert {f"{name}@default" for name in PLANNERS} <= keys
    assert any(not key.endswith("@default") and key.startswith("resenc") for key in keys)
    assert GOLDEN["reference"].startswith("nnunetv2 2.8.1")


def test_several_planners_plan_side_by_side():
    """Each planner's configurations are the ones it plans alone; 2d and 3d_fullres data is shared."""
    fp = golden.large_ct()
    both = plan_experiment(fp, PlannerOptions(planners=("default", "resenc-l")))
    alone = {
        name: plan_experiment(fp, PlannerOptions(planners=(name,))).configurations
        for name in ("default", "resenc-l")
    }
    assert list(both.configurations) == [*alone["default"], *alone["resenc-l"]]
    for configurations in alone.values():
        for name, configuration in configurations.items():
            assert both.configurations[name] == configuration
    resenc = both.configurations
    assert resenc["3d_fullres-resenc-l"].data_identifier == "3d_fullres"
    assert resenc["2d-resenc-l"].data_identifier == "2d"
    assert resenc["3d_lowres-resenc-l"].data_identifier == "3d_lowres-resenc-l"
    assert resenc["3d_lowres-resenc-l"].next_stage == "3d_cascade_fullres-resenc-l"
    assert resenc["3d_cascade_fullres-resenc-l"].previous_stage == "3d_lowres-resenc-l"
    assert resenc["3d_cascade_fullres-resenc-l"].base_name == "3d_cascade_fullres"
    assert both.planner["memory_gb"] == {"default": 8.0, "resenc-l": 24.0}


@pytest.mark.parametrize("planner", sorted(PLANNERS))
def test_cpu_preset_works_with_every_planner(planner):
    plans = plan_experiment(golden.large_ct(), preset("cpu", planners=[planner]))
    for configuration in plans.configurations.values():
        assert configuration.planner == planner
        assert configuration.architecture.features_per_stage[-1] <= 128
        if configuration.spatial_dims == 3:
            assert configuration.batch_size == 2
            assert (
                configuration.patch_size[0]
                * configuration.patch_size[1]
                * configuration.patch_size[2]
                <= 40_000
            )


def test_unknown_or_repeated_planners_are_user_errors():
    with pytest.raises(ToolkitError, match="--planner must be one of"):
        preset("default", planners=["resenc-xxl"])
    with pytest.raises(ToolkitError, match="repeated"):
        PlannerOptions(planners=("default", "default")).check()


def test_training_keys_of_plain_configurations_do_not_change():
    """The plans' new fields at their defaults stay out of the configuration's dict (run-all's
    training key), so an upgrade trains nothing again; a ResEnc configuration keeps them."""
    from toolkit.training.checkpoint import plans_configuration_dict

    plans = plan_experiment(golden.hippocampus(), PlannerOptions(planners=("default", "resenc-m")))
    plain = plans_configuration_dict(plans.configuration("3d_fullres"))
    assert "planner" not in plain
    assert {"network", "n_blocks_per_stage"}.isdisjoint(plain["architecture"])
    resenc = plans_configuration_dict(plans.configuration("3d_fullres-resenc-m"))
    assert resenc["planner"] == "resenc-m"
    assert resenc["architecture"]["network"] == "residual_encoder"
    assert resenc["architecture"]["n_blocks_per_stage"] == [1, 3, 4, 6]
