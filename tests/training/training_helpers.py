"""A tiny preprocessed dataset written directly (no planning or preprocessing run), so the
training tests are fast and independent of the other stages."""

from __future__ import annotations

import numpy as np

from toolkit.cli import main
from toolkit.core.plans import Architecture, Configuration, Normalization, Plans
from toolkit.io.images import Geometry, write_image
from toolkit.io.preprocessed import CaseProperties, save_case

LABELS = {"background": 0, "core": 1, "rim": 2}


def blob_case(rng: np.random.Generator, shape=(20, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A bright sphere (label 1) inside a darker shell (label 2), at a random place."""
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    center = [rng.uniform(s * 0.35, s * 0.65) for s in shape]
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip((zz, yy, xx), center, strict=True)))
    radius = rng.uniform(3.5, 5.0)
    seg = np.zeros(shape, np.int8)
    seg[r < radius + 2.5] = 2
    seg[r < radius] = 1
    image = rng.normal(0, 0.3, shape).astype(np.float32) + (seg == 1) * 2.0 + (seg == 2) * 1.0
    return image[None], seg[None]


def tiny_plans(patch=(16, 16, 16), batch_size=2, cascade=False) -> Plans:
    dims = len(patch)
    arch = Architecture(
        [4, 8, 16], [[3] * dims] * 3, [[1] * dims, [2] * dims, [2] * dims], [1, 1, 1], [1, 1]
    )
    name = "2d" if dims == 2 else "3d_fullres"
    cfg = Configuration(
        name,
        "3d_fullres",
        dims,
        [1.0] * 3,
        [20, 24, 24],
        list(patch),
        batch_size,
        arch,
        [Normalization("zscore")],
    )
    configs = {name: cfg}
    if cascade:
        low = Configuration(
            "3d_lowres",
            "3d_lowres",
            3,
            [1.5] * 3,
            [14, 16, 16],
            list(patch),
            batch_size,
            arch,
            [Normalization("zscore")],
            next_stage="3d_cascade_fullres",
        )
        casc = Configuration(
            "3d_cascade_fullres",
            "3d_fullres",
            3,
            [1.0] * 3,
            [20, 24, 24],
            list(patch),
            batch_size,
            arch,
            [Normalization("zscore")],
            previous_stage="3d_lowres",
        )
        configs.update({"3d_lowres": low, "3d_cascade_fullres": casc})
    return Plans(
        "Tiny", {"0": "MR"}, dict(LABELS), [0, 1, 2], [0, 1, 2], [1.0] * 3, [20, 24, 24], configs
    )


def write_case(folder, case, image, seg, raw_labels=None, original_shape=None):
    """A preprocessed case; ``original_shape`` when it was resampled from another grid."""
    original = [int(v) for v in (original_shape or image.shape[1:])]
    geometry = Geometry((1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel()), tuple(original[::-1]))
    if raw_labels is not None:
        write_image(raw_labels / f"{case}.nii.gz", seg[0].astype(np.uint8), geometry)
    locations = {str(v): np.argwhere(seg[0] == v)[:50].tolist() for v in (1, 2)}
    props = CaseProperties(
        case=case,
        geometry=geometry.to_dict(),
        spacing=[1.0] * 3,
        shape_before_cropping=original,
        crop_bbox=[[0, s] for s in original],
        shape_after_cropping=original,
        shape_after_resampling=list(image.shape[1:]),
        class_locations=locations,
    )
    save_case(folder, case, image, seg, props)


def run_cli(argv, capsys):
    """The CLI in-process: (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
