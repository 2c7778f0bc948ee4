"""Planning rules: golden plans of the reference planner, and each rule on its own."""

import math

import planning_golden as golden
import pytest

from toolkit.core.plans import Plans, deep_supervision_scales
from toolkit.errors import ToolkitError
from toolkit.planning.memory import Calibration, MemoryBudget, feature_map_voxels, parameter_count
from toolkit.planning.planner import PRESETS, PlannerOptions, plan_experiment, plan_network, preset
from toolkit.planning.rules import (
    initial_patch_size,
    target_spacing,
    transpose_axes,
)
from toolkit.planning.topology import pad_to_multiple, pool_and_conv_props


@pytest.mark.parametrize("name", sorted(golden.GOLDEN))
def test_plans_equal_the_reference_planner(name):
    build, gpu_gb, transpose, cascade, expected = golden.GOLDEN[name]
    plans = plan_experiment(build(), PlannerOptions(gpu_memory_gb=gpu_gb))
    assert plans.transpose_forward == transpose
    names = set(expected) | ({"3d_cascade_fullres"} if cascade else set())
    assert set(plans.configurations) == names
    for config_name, want in expected.items():
        c = plans.configurations[config_name]
        got_spacing = c.target_spacing[3 - c.spatial_dims :]
        assert got_spacing == pytest.approx(want["spacing"], rel=1e-9), config_name
        assert c.patch_size == want["patch"], config_name
        assert c.batch_size == want["batch"], config_name
        assert c.architecture.strides == want["strides"], config_name
        assert c.architecture.kernel_sizes == want["kernels"], config_name
        assert c.architecture.features_per_stage == want["features"], config_name
        assert c.batch_dice == want["batch_dice"], config_name


def test_hippocampus_patch_is_40x56x40():
    plans = plan_experiment(golden.hippocampus())
    full = plans.configuration("3d_fullres")
    assert full.patch_size == [40, 56, 40]
    assert full.target_spacing == [1.0, 1.0, 1.0]
    assert "3d_lowres" not in plans.configurations


def test_thick_slices_use_tenth_percentile_and_in_plane_pooling_first():
    plans = plan_experiment(golden.thick_slices())
    full = plans.configuration("3d_fullres")
    assert full.target_spacing[0] == pytest.approx(5.0)  # the median would be 10 mm
    assert full.architecture.strides[1] == [1, 2, 2]
    assert full.architecture.kernel_sizes[0] == [1, 3, 3]
    assert full.resampling.coarse_axis_order == 0


def test_large_ct_gets_lowres_and_cascade_sharing_fullres_data():
    plans = plan_experiment(golden.large_ct())
    low, full = plans.configuration("3d_lowres"), plans.configuration("3d_fullres")
    cascade = plans.configuration("3d_cascade_fullres")
    assert low.next_stage == "3d_cascade_fullres" and cascade.previous_stage == "3d_lowres"
    assert cascade.is_cascade and not full.is_cascade
    assert cascade.data_identifier == full.data_identifier != low.data_identifier
    assert all(a > b for a, b in zip(low.target_spacing, full.target_spacing, strict=True))
    assert full.batch_dice and not low.batch_dice
    assert full.normalization[0].scheme == "ct" and full.normalization[0].lower_bound == 50.0


def test_two_dimensional_data_gets_only_2d():
    plans = plan_experiment(golden.two_dimensional())
    assert list(plans.configurations) == ["2d"]
    assert plans.configuration("2d").spatial_dims == 2


def test_deep_supervision_scales_follow_strides():
    assert deep_supervision_scales([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]) == [
        [1.0, 1.0, 1.0],
        [1.0, 0.5, 0.5],
        [0.5, 0.25, 0.25],
    ]
    plans = plan_experiment(golden.hippocampus())
    full = plans.configuration("3d_fullres")
    assert len(full.deep_supervision_scales) == full.architecture.n_stages - 1


def test_plans_json_round_trip(tmp_path):
    plans = plan_experiment(golden.large_ct())
    plans.save(tmp_path / "plans.json")
    assert Plans.load(tmp_path / "plans.json") == plans


# rules ----------------------------------------------------------------------------------


def test_target_spacing_median_unless_thick_slices():
    assert target_spacing([[1, 1, 1], [2, 1, 1], [3, 1, 1]], [[50, 50, 50]] * 3) == [2, 1, 1]
    # coarse axis > 3x but many slices: keep the median
    assert target_spacing([[4, 1, 1]] * 5, [[100, 100, 100]] * 5) == [4, 1, 1]
    # coarse and few slices: 10th percentile, never finer than the other axes
    spacing = target_spacing([[4, 1, 1]] * 3 + [[0.5, 1, 1]] * 2, [[10, 100, 100]] * 5)
    assert spacing[0] == pytest.approx(1 + 1e-5)


def test_transpose_puts_coarsest_axis_first():
    assert transpose_axes([0.8, 0.8, 3.0]) == ([2, 0, 1], [1, 2, 0])
    assert transpose_axes([3.0, 0.8, 0.8]) == ([0, 1, 2], [0, 1, 2])


def test_initial_patch_has_inverse_spacing_aspect_and_is_clipped():
    patch = initial_patch_size([2.0, 1.0, 1.0], [1000, 1000, 1000], 256**3)
    assert patch[1] == patch[2] and abs(2 * patch[0] - patch[1]) <= 2
    assert initial_patch_size([1.0, 1.0, 1.0], [36, 50, 35.5], 256**3) == [36, 50, 35.5]


def test_pooling_rule_respects_feature_map_and_spacing():
    topo = pool_and_conv_props([1.0, 1.0, 1.0], [36, 50, 35])
    assert topo.pools_per_axis == [3, 3, 3] and topo.patch_size == [40, 56, 40]
    # an axis pooled alone needs at least 12 voxels
    topo = pool_and_conv_props([1.0, 1.0], [10, 200])
    assert topo.pools_per_axis[0] == 1
    # a 4 mm axis next to 1 mm axes is left alone (kernel 1) until in-plane spacing catches up
    topo = pool_and_conv_props([4.0, 1.0, 1.0], [40, 160, 160])
    assert topo.strides[1] == [1, 2, 2] and topo.strides[2] == [1, 2, 2]
    assert topo.kernel_sizes[0] == [1, 3, 3] and topo.kernel_sizes[2] == [3, 3, 3]
    assert topo.strides[3] == [2, 2, 2]


def test_pad_to_multiple():
    assert pad_to_multiple([35.5, 48, 1], [16, 16, 1]) == [48, 48, 1]


def test_feature_map_estimate_counts_every_map():
    # two stages, one conv each: encoder 4*8^3 + 8*4^3; decoder conv + transposed conv 4*8^3 each, head 3*8^3
    voxels = feature_map_voxels(
        [8, 8, 8], [[1, 1, 1], [2, 2, 2]], [4, 8], [1, 1], [1], num_classes=3
    )
    assert voxels == 4 * 512 + 8 * 64 + 4 * 512 + 4 * 512 + 3 * 512


def test_parameter_count_matches_the_network():
    torch = pytest.importorskip("torch")
    from toolkit.core.plans import Architecture
    from toolkit.nets import UNet

    arch = Architecture(
        [8, 16, 32],
        [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        [2, 2, 2],
        [2, 2],
    )
    net = UNet(2, 3, arch, 3)
    expected = sum(p.numel() for p in net.parameters() if p.requires_grad)
    count = parameter_count(
        2,
        3,
        arch.features_per_stage,
        arch.kernel_sizes,
        arch.strides,
        arch.n_conv_per_stage,
        arch.n_conv_per_stage_decoder,
    )
    assert count == expected
    del torch


# options --------------------------------------------------------------------------------


def test_more_memory_gives_larger_patches():
    small = plan_experiment(golden.large_ct()).configuration("3d_fullres")
    large = plan_experiment(golden.large_ct(), PlannerOptions(gpu_memory_gb=24)).configuration(
        "3d_fullres"
    )
    assert math.prod(large.patch_size) > math.prod(small.patch_size)


def test_cpu_preset_is_small_and_recorded():
    plans = plan_experiment(golden.large_ct(), preset("cpu"))
    for c in plans.configurations.values():
        limit = PRESETS["cpu"].max_patch_voxels(c.spatial_dims)
        assert math.prod(c.patch_size) <= limit
        assert max(c.architecture.features_per_stage) <= 128
        assert c.batch_size <= PRESETS["cpu"].max_batch_size(c.spatial_dims)
    assert plans.planner["preset"] == "cpu"
    assert plans.planner["features_base"] == 16


def test_explicit_limits_override_a_preset():
    options = preset("default", max_patch_voxels_3d=20_000, features_base=8)
    full = plan_experiment(golden.hippocampus(), options).configuration("3d_fullres")
    assert math.prod(full.patch_size) <= 20_000 and full.architecture.features_per_stage[0] == 8


def test_bad_options_are_user_errors():
    with pytest.raises(ToolkitError, match="preset"):
        preset("gpu-huge")
    with pytest.raises(ToolkitError, match="gpu_memory_gb"):
        PlannerOptions(gpu_memory_gb=0).check()
    with pytest.raises(ToolkitError, match="no patch fits"):
        plan_network(
            [1.0, 1.0, 1.0], [64, 64, 64], 1e6, 1, 2, PlannerOptions(max_patch_voxels_3d=0.5)
        )


def test_calibrated_memory_model_uses_measured_bytes():
    cal = Calibration(bytes_per_feature_voxel=10.0, bytes_per_parameter=16.0, constant_bytes=1e8)
    budget = MemoryBudget(3, gpu_memory_gb=2.0, model="calibrated", calibration=cal)
    assert budget.fits(10_000_000, 1_000_000, 2)  # 2e8 + 1.6e7 + 1e8 bytes
    assert not budget.fits(100_000_000, 1_000_000, 2)
    assert budget.batch_size(10_000_000, 1_000_000) == 18
    plans = plan_experiment(
        golden.hippocampus(), PlannerOptions(memory_model="calibrated", gpu_memory_gb=2.0), cal
    )
    assert (
        plans.planner["memory_model"] == "calibrated"
        and plans.planner["calibration"]["constant_bytes"] == 1e8
    )
    with pytest.raises(ToolkitError, match="calibration"):
        plan_experiment(golden.hippocampus(), PlannerOptions(memory_model="calibrated"))


def test_shipped_calibration_loads_and_plans(tmp_path):
    cal = Calibration.load()
    assert cal.bytes_per_feature_voxel > 0 and cal.num_measurements > 0 and cal.measured_on
    plans = plan_experiment(golden.hippocampus(), PlannerOptions(memory_model="calibrated"), cal)
    assert plans.configuration("3d_fullres").batch_size >= 2
    with pytest.raises(ToolkitError, match="calibrate_memory"):
        Calibration.load(tmp_path / "missing.json")
