"""batchgeneratorsv2's label resampling, as nnU-Net v2 2.8.1 configures its ``SpatialTransform``
(bilinear one-hot maps, the segmentation padded with -1, the nearest voxel settling ties), on
given label crops and sampling grids: the reference half of
``tests/training/test_resampling_agreement.py``.

Runs with the Python that holds ``nnunetv2`` (``$TOOLKIT_NNUNET_PYTHON`` or
``bench/.venv-nnunet``), never with the project's. Reads ``labels`` ``(n, C, *crop)`` and
``grid`` ``(n, *patch, d)`` (``grid_sample``'s, ``align_corners=False``) from an ``.npz`` and
writes the resampled ``labels`` ``(n, C, *patch)`` into ``--out``.

    python bench/resample_reference.py --inputs IN.npz --out OUT.npz
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    torch.set_num_threads(1)
    inputs = np.load(args.inputs)
    labels, grid = inputs["labels"], inputs["grid"]
    patch = grid.shape[1:-1]
    # the arguments of nnUNetTrainer.get_training_transforms that bear on the labels
    transform = SpatialTransform(
        patch,
        patch_center_dist_from_border=0,
        random_crop=False,
        p_elastic_deform=0,
        p_rotation=0.2,
        p_scaling=0.2,
        scaling=(0.7, 1.4),
        p_synchronize_scaling_across_axes=1,
        bg_style_seg_sampling=False,
        border_mode_seg="constant",
        padding_value_seg=-1,
    )
    out = np.stack(
        [
            transform._apply_to_segmentation(
                torch.from_numpy(labels[i]), grid=torch.from_numpy(grid[i])
            ).numpy()
            for i in range(len(labels))
        ]
    )
    np.savez(args.out, labels=out)


if __name__ == "__main__":
    main(sys.argv[1:])
