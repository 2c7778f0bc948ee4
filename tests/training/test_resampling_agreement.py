"""The toolkit's label resampling against batchgeneratorsv2's, as nnU-Net v2 2.8.1 configures
its ``SpatialTransform`` (``bench/resample_reference.py``, run in nnU-Net's venv, found
through ``TOOLKIT_NNUNET_PYTHON`` or ``bench/.venv-nnunet``): the same crops and sampling
grids give the same labels, bit for bit, ties and the border band included."""

import subprocess

import numpy as np
import pytest
import torch

from bench import lockstep
from toolkit.training.augmentation.spatial import (
    SpatialRules,
    may_reach_outside,
    resample_labels,
    sampling_grid,
    sampling_matrix,
)

REFERENCE = lockstep.BENCH / "resample_reference.py"


def blob_labels(rng, shape, values) -> np.ndarray:
    """Smooth random regions of ``values``, with a frame of -1 (outside the nonzero mask)."""
    fields = rng.normal(size=(len(values), *[max(2, s // 4) for s in shape]))
    zoomed = torch.nn.functional.interpolate(
        torch.from_numpy(fields)[None],
        size=shape,
        mode="bilinear" if len(shape) == 2 else "trilinear",
    )[0]
    out = np.asarray(values, dtype=np.int16)[zoomed.argmax(0).numpy()]
    out[(slice(0, 2),)] = -1
    return out


def cases(dims: int):
    """Crops, patches and matrices: rotated and scaled (reaching past the crop), and shifted
    by exactly half a voxel along the first axis (every label boundary there a tie)."""
    rng = np.random.default_rng(dims)
    patch = (12, 14, 16)[-dims:]
    crop = (21, 22, 24)[-dims:]  # the first axis odd against an even patch: half-voxel offsets
    axes = (0,) if dims == 2 else (0, 1, 2)
    rules = SpatialRules(patch, crop, 0.5, axes, tuple(range(dims)), (), False)
    matrices = [
        sampling_matrix(rules, rng.uniform(-0.5, 0.5, len(axes)), s) for s in (0.8, 1.4, 1.8)
    ]
    matrices.append(np.eye(dims))
    labels = np.stack(
        [
            np.stack([blob_labels(rng, crop, [0, 1, 2, 3]), blob_labels(rng, crop, [0, 1])])
            for _ in matrices
        ]
    )
    return torch.from_numpy(labels), torch.from_numpy(np.stack(matrices)), patch


@pytest.mark.parametrize("dims", [2, 3])
def test_label_resampling_agrees_with_batchgeneratorsv2(tmp_path, dims):
    python = lockstep.reference_python()
    if not python.is_file():
        pytest.skip(f"nnU-Net v2 is not installed: no {python} (set TOOLKIT_NNUNET_PYTHON)")
    labels, matrices, patch = cases(dims)
    grid = sampling_grid(matrices, tuple(labels.shape[2:]), patch, torch.device("cpu"))
    ours = resample_labels(labels, grid)
    np.savez(tmp_path / "in.npz", labels=labels.numpy(), grid=grid.numpy())
    subprocess.run(
        [
            str(python),
            str(REFERENCE),
            "--inputs",
            str(tmp_path / "in.npz"),
            "--out",
            str(tmp_path / "out.npz"),
        ],
        check=True,
    )
    theirs = np.load(tmp_path / "out.npz")["labels"]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.numpy(), theirs)
    # the cases reach both rules: the border band, and ties (identity with half-voxel shift)
    crop = tuple(labels.shape[2:])
    reaching = [may_reach_outside(grid[i : i + 1], crop) for i in range(len(grid))]
    assert reaching == [False, True, True, False]
    shifted = labels[-1, 0].numpy()
    ties = (shifted[1:] != shifted[:-1]).sum()
    assert ties > 0 and (ours[:, 0] == -1).any() and (ours[:, 0] > 0).any()
