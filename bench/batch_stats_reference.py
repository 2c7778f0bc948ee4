"""What nnU-Net v2's training batches hold (``bench/batch_stats.py`` compares them with the
toolkit's): its own trainer's data loader and augmentation (``get_dataloaders`` with
``nnUNet_n_proc_DA=0``, so everything runs in this process), on a dataset it preprocessed.

Runs with the Python that holds ``nnunetv2``. Its transforms are instrumented, not changed:
each ``RandomTransform``'s draw, the spatial transform's affine (rotation, scale), the mirrored
axes, and the share of outside-label (-1) voxels before ``RemoveLabelTansform`` maps them to
background. Per sample it records :func:`sample_stats`; prints ``RESULT {json}``; with
``--dump`` also saves the first batches (input and full-resolution target) to ``.npy`` files,
which ``bench/crossover.py`` feeds to the toolkit's trainer.

    python bench/batch_stats_reference.py --root DIR --dataset-id 905 --batches 200 --seed 0 \
        --out stats.json [--dump PREFIX --dump-count 100]

:func:`sample_stats` is numpy only, so that the toolkit's side imports it too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np


def sample_stats(
    image: np.ndarray, target: np.ndarray, outside: float, position: int, classes: list[int]
) -> dict:
    """One sample: image ``(C, *spatial)`` after augmentation, target ``(*spatial)`` as the
    loss gets it; ``outside`` the share of its voxels that held the outside label -1."""
    image = np.asarray(image, dtype=np.float64)
    fractions = [float((target == c).mean()) for c in classes]
    return {
        "position": position,
        "foreground_fraction": float(sum(fractions)),
        "class_fraction": fractions,
        "any_foreground": bool(sum(fractions) > 0),
        "outside_fraction": float(outside),
        "mean": float(image.mean()),
        "std": float(image.std()),
        "min": float(image.min()),
        "max": float(image.max()),
        "zero_fraction": float((image == 0).mean()),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset-id", type=int, required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dump",
        default=None,
        help="save the first --dump-count batches as DUMP_data.npy and DUMP_target.npy",
    )
    parser.add_argument("--dump-count", type=int, default=0)
    parser.add_argument("--out", default=None, help="the full result (every sample) as JSON")
    args = parser.parse_args(argv)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = os.path.join(os.path.abspath(args.root), name)
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ["nnUNet_compile"] = "false"

    import torch
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(1)
    fired: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    outside: list[float] = []
    spatial: list[dict] = []
    mirrored = []

    def name_of(t) -> str:
        inner = t.transform
        name = type(inner).__name__
        if name == "GammaTransform":
            name += "(inverted)" if inner.p_invert_image else ""
        return name

    random_parameters = RandomTransform.get_parameters

    def counted(self, **data):
        params = random_parameters(self, **data)
        fired[name_of(self)][0] += int(params["apply_transform"])
        fired[name_of(self)][1] += 1
        return params

    spatial_parameters = SpatialTransform.get_parameters

    def recorded(self, **data):
        params = spatial_parameters(self, **data)
        affine = params.get("affine")
        if affine is None:
            spatial.append({"rotated": False, "scaled": False, "scale": 1.0})
        else:
            scales = np.linalg.norm(affine, axis=0)
            rotation = affine / scales
            spatial.append(
                {
                    "rotated": bool(not np.allclose(rotation, np.eye(len(scales)), atol=1e-7)),
                    "scaled": bool(not np.allclose(scales, 1.0, atol=1e-7)),
                    "scale": float(scales.mean()),
                }
            )
        return params

    mirror_parameters = MirrorTransform.get_parameters

    def mirrored_axes(self, **data):
        params = mirror_parameters(self, **data)
        mirrored.append([int(a in params["axes"]) for a in self.allowed_axes])
        return params

    # blur and low resolution pick channels (p 0.5 each) once drawn: count the samples where
    # at least one channel was picked, the toolkit's count of those transforms
    picked: dict[str, int] = defaultdict(int)

    def channel_counting(cls, name):
        original = cls.get_parameters

        def get_parameters(self, **data):
            params = original(self, **data)
            chosen = torch.as_tensor(params["apply_to_channel"])  # a mask, or channel indices
            picked[name] += int(
                bool(chosen.any()) if chosen.dtype == torch.bool else len(chosen) > 0
            )
            return params

        cls.get_parameters = get_parameters

    channel_counting(GaussianBlurTransform, "GaussianBlurTransform")
    channel_counting(SimulateLowResolutionTransform, "SimulateLowResolutionTransform")

    remove = RemoveLabelTransform._apply_to_segmentation

    def removing(self, segmentation, **params):
        if self.label_value == -1:
            outside.append(float((segmentation[0] == -1).float().mean()))
        return remove(self, segmentation, **params)

    RandomTransform.get_parameters = counted
    SpatialTransform.get_parameters = recorded
    MirrorTransform.get_parameters = mirrored_axes
    RemoveLabelTransform._apply_to_segmentation = removing

    trainer = get_trainer_from_args(
        str(args.dataset_id), args.configuration, args.fold, device=torch.device("cpu")
    )
    trainer.initialize()
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    loader, val_loader = trainer.get_dataloaders()  # draws one batch of each
    fired.clear()
    picked.clear()
    outside.clear()
    spatial.clear()
    mirrored.clear()
    classes = [int(c) for c in trainer.label_manager.foreground_labels]
    samples = []
    dumped = None
    for i in range(args.batches):
        batch = next(loader)
        data = batch["data"].numpy()
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).numpy()
        start = len(outside) - len(data)
        for j in range(len(data)):
            samples.append(sample_stats(data[j], target[j, 0], outside[start + j], j, classes))
        if args.dump and i < args.dump_count:
            if dumped is None:  # written as they come: .npy files the toolkit memory-maps
                dumped = [
                    np.lib.format.open_memmap(
                        f"{args.dump}_{name}.npy", "w+", dtype, (args.dump_count, *a.shape)
                    )
                    for name, dtype, a in (("data", np.float32, data), ("target", np.int16, target))
                ]
            dumped[0][i] = data
            dumped[1][i] = target
    if dumped is not None:
        for array in dumped:
            array.flush()
    result = {
        "tool": "nnU-Net v2",
        "patch_size": [int(p) for p in trainer.configuration_manager.patch_size],
        "batch_size": int(trainer.batch_size),
        "oversample_foreground_percent": trainer.oversample_foreground_percent,
        "samples": samples,
        "fired": {k: v[0] / max(v[1], 1) for k, v in fired.items()},
        "fired_with_a_channel": {k: picked[k] / max(fired[k][1], 1) for k in picked},
        "spatial": spatial,
        "mirrored": mirrored,
    }
    for dl in (loader, val_loader):
        if hasattr(dl, "_finish"):
            dl._finish()
    return result


if __name__ == "__main__":
    parsed = main(sys.argv[1:])
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    if out:
        with open(out, "w") as f:
            json.dump(parsed, f)
    print(
        "RESULT "
        + json.dumps(
            {k: v for k, v in parsed.items() if k not in ("samples", "spatial", "mirrored")}
        ),
        flush=True,
    )
    os._exit(0)
