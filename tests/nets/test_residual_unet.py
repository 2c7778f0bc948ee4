"""The residual-encoder U-Net: nnU-Net v2's ResidualEncoderUNet, name for name, shape for shape.

The names, shapes, feature-map counts and parameter counts of two networks the reference
planned are in ``tests/planning/resenc_golden.json`` (``python -m bench.resenc_golden``).
The numeric check runs the reference's own network with the reference's Python (skipped
with a reason where it is not installed).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from toolkit.core.plans import Architecture
from toolkit.nets import nnunet_v2_weights
from toolkit.nets.residual_unet import BasicBlock, ResidualEncoderUNet
from toolkit.planning.memory import residual_feature_map_voxels, residual_parameter_count

REPO = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((REPO / "tests" / "planning" / "resenc_golden.json").read_text())
NNUNET_PYTHON = Path(
    os.environ.get("TOOLKIT_NNUNET_PYTHON", REPO / "bench" / ".venv-nnunet" / "bin" / "python")
)
NETWORKS = GOLDEN["networks"]


def architecture(kw: dict) -> Architecture:
    return Architecture(
        features_per_stage=list(kw["features_per_stage"]),
        kernel_sizes=[list(k) for k in kw["kernel_sizes"]],
        strides=[list(s) for s in kw["strides"]],
        n_conv_per_stage=[],
        n_conv_per_stage_decoder=list(kw["n_conv_per_stage_decoder"]),
        network="residual_encoder",
        n_blocks_per_stage=list(kw["n_blocks_per_stage"]),
    )


def ours(spec: dict, deep_supervision: bool = False) -> ResidualEncoderUNet:
    a = architecture(spec["arch_kwargs"])
    return ResidualEncoderUNet(
        spec["input_channels"], spec["num_classes"], a, len(a.kernel_sizes[0]), deep_supervision
    )


@pytest.mark.parametrize("spec", NETWORKS, ids=lambda s: f"{s['fingerprint']}-{s['configuration']}")
def test_state_dict_names_and_shapes_are_the_references(spec):
    """Ours holds exactly the reference's parameters, same names, same shapes, same order;
    the reference's state dict also holds each under alias names, which loading drops."""
    reference = [tuple(entry) for entry in spec["parameter_shapes"]]  # in the reference's order
    mine = [(k, list(v.shape)) for k, v in ours(spec).state_dict().items()]
    assert mine == reference
    assert spec["state_dict_entries"] > len(reference)  # the aliases


@pytest.mark.parametrize("spec", NETWORKS, ids=lambda s: f"{s['fingerprint']}-{s['configuration']}")
def test_feature_map_and_parameter_counts_are_the_references(spec):
    a = architecture(spec["arch_kwargs"])
    voxels = residual_feature_map_voxels(
        spec["patch_size"],
        a.strides,
        a.features_per_stage,
        a.n_blocks_per_stage,
        a.n_conv_per_stage_decoder,
        spec["num_classes"],
    )
    assert voxels == spec["feature_map_size"]
    params = residual_parameter_count(
        spec["input_channels"],
        spec["num_classes"],
        a.features_per_stage,
        a.kernel_sizes,
        a.strides,
        a.n_blocks_per_stage,
        a.n_conv_per_stage_decoder,
    )
    assert params == spec["parameters"] == sum(p.numel() for p in ours(spec).parameters())


def test_each_block_starts_as_its_skip():
    network = ours(NETWORKS[0])
    blocks = [m for m in network.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == sum(NETWORKS[0]["arch_kwargs"]["n_blocks_per_stage"])
    for block in blocks:
        assert torch.all(block.conv2.norm.weight == 0) and torch.all(block.conv2.norm.bias == 0)


def test_architecture_lists_are_checked():
    kw = dict(NETWORKS[0]["arch_kwargs"], n_blocks_per_stage=[1, 3])
    with pytest.raises(ValueError, match="n_blocks_per_stage need one entry per stage"):
        ours({**NETWORKS[0], "arch_kwargs": kw})


def _reference_available() -> str | None:
    if not NNUNET_PYTHON.is_file():
        return f"nnU-Net v2 is not installed: no {NNUNET_PYTHON} (make it with `make reference`, or set TOOLKIT_NNUNET_PYTHON)"
    probe = subprocess.run(
        [str(NNUNET_PYTHON), "-c", "import dynamic_network_architectures"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"dynamic_network_architectures does not import in {NNUNET_PYTHON}"
    return None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("index", [0, 1], ids=["3d", "2d"])
def test_same_weights_give_the_references_output(tmp_path, index):
    reason = _reference_available()
    if reason is not None:
        pytest.skip(reason)
    spec = dict(NETWORKS[index])
    # a small patch of the planned topology: one voxel per axis at the bottleneck, x2
    divisor = [1] * len(spec["patch_size"])
    for stride in spec["arch_kwargs"]["strides"]:
        divisor = [d * s for d, s in zip(divisor, stride, strict=True)]
    spec["patch_size"] = [2 * d for d in divisor]
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(spec))
    out = tmp_path / "reference.pt"
    result = subprocess.run(
        [
            str(NNUNET_PYTHON),
            str(REPO / "bench" / "resenc_golden.py"),
            "forward",
            "--arch",
            str(arch_file),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    network = ours(spec, deep_supervision=True).eval()
    network.load_state_dict(nnunet_v2_weights.convert_state_dict(saved["state_dict"]), strict=True)
    with torch.no_grad():
        outputs = network(saved["input"])
    assert len(outputs) == len(saved["outputs"])
    for mine, theirs in zip(outputs, saved["outputs"], strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
