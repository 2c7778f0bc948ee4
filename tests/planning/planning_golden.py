"""Golden fingerprints (no data needed) and the plans nnU-Net v2 2.8.1's ExperimentPlanner makes of them.

The expected values were produced by running the reference planner on exactly these
fingerprints (8 GB default budget unless said otherwise).
"""

from __future__ import annotations

from toolkit.core.fingerprint import CaseFingerprint, Fingerprint, IntensityStats


def fingerprint(
    spacings, shapes, labels=("a", "b"), channels=("MRI",), relative_size=1.0, num_training=None
):
    cases = [
        CaseFingerprint(
            case=f"case_{i:03d}",
            spacing=[float(s) for s in sp],
            shape_before_cropping=list(sh),
            crop_bbox=[[0, s] for s in sh],
            shape_after_cropping=list(sh),
        )
        for i, (sp, sh) in enumerate(zip(spacings, shapes, strict=True))
    ]
    stats = IntensityStats(
        mean=100.0,
        std=20.0,
        median=100.0,
        min=0.0,
        max=200.0,
        percentile_00_5=50.0,
        percentile_99_5=150.0,
    )
    return Fingerprint(
        dataset_name="Golden",
        channel_names={str(i): c for i, c in enumerate(channels)},
        labels={"background": 0, **{name: i + 1 for i, name in enumerate(labels)}},
        num_training=len(cases) if num_training is None else num_training,
        cases=cases,
        intensity=[stats] * len(channels),
        median_relative_size_after_cropping=relative_size,
    )


def hippocampus():
    """Task04_Hippocampus-like: 260 cases of 36x50x35 at 1 mm."""
    return fingerprint([[1, 1, 1]] * 260, [[36, 50, 35]] * 260)


def thick_slices():
    """ACDC-like cine MR: mostly 10 mm slices (some 5 and 6.5 mm), 1.5625 mm in-plane, few slices."""
    slice_spacing = [5.0, 6.5, 10.0, 10.0, 10.0]
    spacings = [[slice_spacing[i % 5], 1.5625, 1.5625] for i in range(100)]
    shapes = [[8 + i % 4, 200 + (7 * i) % 60, 210 + (11 * i) % 50] for i in range(100)]
    return fingerprint(spacings, shapes, labels=("RV", "MLV", "LVC"), channels=("cineMRI",))


def large_ct():
    """LiTS-like CT: 131 cases of 512x512 in-plane, 100-900 slices of 0.7-5 mm."""
    spacings = [
        [0.7 + (i * 37 % 100) / 100 * 4.3, 0.6 + (i * 13 % 36) / 100, 0.6 + (i * 13 % 36) / 100]
        for i in range(131)
    ]
    shapes = [[100 + (i * 53) % 800, 512, 512] for i in range(131)]
    return fingerprint(spacings, shapes, labels=("liver", "tumour"), channels=("CT",))


def coarse_last_axis():
    """Coarse spacing on the last array axis: the transpose must bring it first."""
    spacings = [[0.8, 0.8, 2.5 + (i % 6) * 0.25] for i in range(40)]
    shapes = [[150 + (3 * i) % 50, 160 + (7 * i) % 40, 40 + (5 * i) % 30] for i in range(40)]
    return fingerprint(spacings, shapes, labels=("a",))


def two_dimensional():
    """2D images: a (1, y, x) array per case, slice spacing 999."""
    shapes = [[1, 80 + (3 * i) % 20, 82 + (5 * i) % 18] for i in range(24)]
    return fingerprint([[999.0, 0.5, 0.5]] * 24, shapes)


def multimodal_masked():
    """BraTS-like: four MR channels at 1 mm, cropping keeps less than 3/4 of the image."""
    shapes = [[130 + i % 20, 160 + (3 * i) % 20, 130 + (7 * i) % 15] for i in range(484)]
    return fingerprint(
        [[1, 1, 1]] * 484,
        shapes,
        labels=("a", "b", "c"),
        channels=("FLAIR", "T1w", "t1gd", "T2w"),
        relative_size=0.6,
    )


# name -> (fingerprint builder, gpu memory GB, expected transpose_forward, expected configurations)
# per configuration: spacing (transposed, the configuration's own axes), patch, batch, strides, kernels, batch_dice
GOLDEN = {
    "hippocampus": (
        hippocampus,
        8,
        [0, 1, 2],
        False,
        {
            "2d": {
                "batch": 366,
                "batch_dice": True,
                "features": [32, 64, 128, 256],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [56, 40],
                "spacing": [1.0, 1.0],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 9,
                "batch_dice": False,
                "features": [32, 64, 128, 256],
                "kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [40, 56, 40],
                "spacing": [1.0, 1.0, 1.0],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
        },
    ),
    "hippocampus_4gb": (
        hippocampus,
        4,
        [0, 1, 2],
        False,
        {
            "2d": {
                "batch": 366,
                "batch_dice": True,
                "features": [32, 64, 128, 256],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [56, 40],
                "spacing": [1.0, 1.0],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 9,
                "batch_dice": False,
                "features": [32, 64, 128, 256],
                "kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [40, 56, 40],
                "spacing": [1.0, 1.0, 1.0],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
        },
    ),
    "thick_slices": (
        thick_slices,
        8,
        [0, 1, 2],
        False,
        {
            "2d": {
                "batch": 49,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512, 512, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [256, 256],
                "spacing": [1.5625, 1.5625],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 4,
                "batch_dice": False,
                "features": [32, 64, 128, 256, 320, 320, 320],
                "kernels": [
                    [1, 3, 3],
                    [3, 3, 3],
                    [3, 3, 3],
                    [3, 3, 3],
                    [3, 3, 3],
                    [3, 3, 3],
                    [3, 3, 3],
                ],
                "patch": [16, 256, 256],
                "spacing": [5.0, 1.5625, 1.5625],
                "strides": [
                    [1, 1, 1],
                    [1, 2, 2],
                    [2, 2, 2],
                    [2, 2, 2],
                    [1, 2, 2],
                    [1, 2, 2],
                    [1, 2, 2],
                ],
            },
        },
    ),
    "large_ct": (
        large_ct,
        8,
        [0, 1, 2],
        True,
        {
            "2d": {
                "batch": 12,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512, 512, 512, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [512, 512],
                "spacing": [0.78, 0.78],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 2,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [112, 128, 128],
                "spacing": [2.807, 0.78, 0.78],
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
            "3d_lowres": {
                "batch": 2,
                "batch_dice": False,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [160, 128, 112],
                "spacing": [4.3732145384, 2.1948127144, 2.1948127144],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]],
            },
        },
    ),
    "large_ct_24gb": (
        large_ct,
        24,
        [0, 1, 2],
        True,
        {
            "2d": {
                "batch": 37,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512, 512, 512, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [512, 512],
                "spacing": [0.78, 0.78],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 2,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [112, 224, 224],
                "spacing": [2.807, 0.78, 0.78],
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
            "3d_lowres": {
                "batch": 2,
                "batch_dice": False,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [192, 192, 192],
                "spacing": [2.9779463, 1.4945606589, 1.4945606589],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
        },
    ),
    "coarse_last_axis": (
        coarse_last_axis,
        8,
        [2, 0, 1],
        False,
        {
            "2d": {
                "batch": 88,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [192, 192],
                "spacing": [0.8, 0.8],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 2,
                "batch_dice": False,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [64, 160, 192],
                "spacing": [2.5, 0.8, 0.8],
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
        },
    ),
    "two_dimensional": (
        two_dimensional,
        8,
        [0, 1, 2],
        False,
        {
            "2d": {
                "batch": 2,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [96, 96],
                "spacing": [0.5, 0.5],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
            }
        },
    ),
    "multimodal_masked": (
        multimodal_masked,
        8,
        [0, 1, 2],
        False,
        {
            "2d": {
                "batch": 105,
                "batch_dice": True,
                "features": [32, 64, 128, 256, 512, 512],
                "kernels": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
                "patch": [192, 160],
                "spacing": [1.0, 1.0],
                "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
            },
            "3d_fullres": {
                "batch": 2,
                "batch_dice": False,
                "features": [32, 64, 128, 256, 320, 320],
                "kernels": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "patch": [128, 128, 128],
                "spacing": [1.0, 1.0, 1.0],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            },
        },
    ),
}
