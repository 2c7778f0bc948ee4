"""Patch sampling from the memory-mapped preprocessed cases.

Rules (the reference implementation's, nnU-Net v2):

* Cases are drawn uniformly, with replacement.
* Foreground oversampling: the last third of every batch is forced to contain foreground,
  sample ``j`` of a batch of ``B`` being forced when ``j >= round(B * (1 - 0.33))`` (so a
  batch of 2 has one random and one forced sample). The reference also offers a variant
  that forces each sample with probability 0.33; its default, used here, is the fixed last
  third, which keeps the foreground share of each batch constant. With several processes
  the flags are those of the global batch, each process taking its slice.
* A forced sample picks a foreground class (or region) present in the case (uniformly among
  them), then one of that class's recorded voxel locations (uniformly: in 2D the slice is that
  voxel's, so slices count by their recorded voxels), and centres the crop on it. Only the
  lower bound of the random crops holds the crop's start, so the voxel stays at the centre
  and the crop may run into padding at the upper border. A case without foreground falls
  back to a random crop.
* With an ignore label (``annotated_only``), a sample that is not forced is centred on a
  recorded annotated voxel (any value but the ignore value), and a forced sample in a case
  without foreground on one too, so that every patch holds annotated voxels; a case with
  none at all falls back to a random crop (the reference's ``get_bbox``).
* Random crops may reach half the enlargement beyond the image on each side (an odd
  enlargement's extra voxel on the low side, as the reference rounds), so patch centres
  cover the border; images smaller than the crop are padded. Padding is 0 for the
  image and -1 for the labels and for the previous stage's (the "outside" label,
  background for the loss and for the cascade's one-hot channels).
* The previous stage's labels are cropped as they are: the cascade's perturbations act on
  the final patch after augmentation (:mod:`toolkit.training.augmentation.cascade_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.labels import ANNOTATED_KEY
from toolkit.errors import ToolkitError
from toolkit.io.preprocessed import CaseProperties, load_case

OVERSAMPLE_FRACTION = 0.33
IMAGE_PAD = 0.0
LABEL_PAD = -1


def foreground_flags(batch_size: int, fraction: float = OVERSAMPLE_FRACTION) -> list[bool]:
    """Which samples of a (global) batch are forced to contain foreground."""
    first_forced = round(batch_size * (1 - fraction))
    return [j >= first_forced for j in range(batch_size)]


def crop_range(
    shape: tuple[int, ...], crop: tuple[int, ...], patch: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """Lowest and highest crop start per axis (inclusive); may lie outside the image."""
    lows, highs = [], []
    for s, c, p in zip(shape, crop, patch, strict=True):
        need = c - p
        if s + need < c:
            need = c - s
        lows.append((-need) // 2)  # the reference's -need // 2: an odd need pads the low side more
        highs.append(s + need // 2 + need % 2 - c)
    return lows, highs


def crop_and_pad(
    array: np.ndarray, start: list[int], size: tuple[int, ...], pad_value, dtype
) -> np.ndarray:
    """``array[:, start:start+size]`` (leading channel axis kept), padded where outside."""
    spatial = array.shape[1:]
    out = np.full((array.shape[0], *size), pad_value, dtype=dtype)
    src, dst = [slice(None)], [slice(None)]
    for lo, n, s in zip(start, size, spatial, strict=True):
        a, b = max(lo, 0), min(lo + n, s)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


@dataclass
class CaseData:
    name: str
    image: np.ndarray  # (c, z, y, x), memory-mapped
    labels: np.ndarray  # (1, z, y, x)
    previous: np.ndarray | None  # (1, z, y, x) previous stage's labels (cascade)
    locations: dict[str, np.ndarray]  # foreground class or region -> (n, 3) voxel indices
    annotated: np.ndarray | None = None  # (n, 3) annotated voxels (datasets with ignore)

    @classmethod
    def open(cls, folder: Path, case: str, previous_folder: Path | None = None) -> CaseData:
        image, labels, props = load_case(folder, case)
        previous = None
        if previous_folder is not None:
            path = previous_folder / f"{case}.npy"
            if not path.is_file():
                raise ToolkitError("previous stage prediction for this case is missing", path)
            previous = np.load(path, mmap_mode="r")
            if previous.shape[1:] != image.shape[1:]:
                raise ToolkitError(
                    f"previous stage prediction has shape {previous.shape[1:]}, the case {image.shape[1:]}",
                    path,
                )
        locations = class_locations(props)
        annotated = locations.pop(ANNOTATED_KEY, None)
        return cls(case, image, labels, previous, locations, annotated)


def class_locations(props: CaseProperties) -> dict[str, np.ndarray]:
    """The recorded voxels of each foreground class or region present (keys as stored, in
    the order stored), and of the annotated voxels under :data:`ANNOTATED_KEY`."""
    out = {}
    for key, voxels in props.class_locations.items():
        array = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
        if key != "0" and array.size:
            out[key] = array
    return out


@dataclass
class SampledBatch:
    image: np.ndarray  # (n, C, *crop) float32
    labels: np.ndarray  # (n, S, *crop) int16: target, then previous stage if any
    cases: list[str]


class PatchSampler:
    """Draws crops for one process's share of the batch.

    ``flags`` are that share's foreground-forcing flags (from :func:`foreground_flags`).
    For 2D configurations (``patch`` of two entries) a slice along the first axis is drawn.
    """

    def __init__(
        self,
        cases: list[CaseData],
        patch: tuple[int, ...],
        crop: tuple[int, ...],
        flags: list[bool],
        annotated_only: bool = False,
    ):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        self.annotated_only = annotated_only
        self.cases = cases
        self.patch = tuple(patch)
        self.crop = tuple(crop)
        self.flags = list(flags)
        self.two_d = len(self.patch) == 2

    def sample(self, rng: np.random.Generator) -> SampledBatch:
        n = len(self.flags)
        picks = rng.integers(len(self.cases), size=n)
        first = self.cases[0]
        channels_label = 1 + (first.previous is not None)
        image = np.empty((n, first.image.shape[0], *self.crop), dtype=np.float32)
        labels = np.empty((n, channels_label, *self.crop), dtype=np.int16)
        names = []
        for j, (pick, forced) in enumerate(zip(picks, self.flags, strict=True)):
            case = self.cases[int(pick)]
            names.append(case.name)
            img, lab, prev = self.crop_case(case, forced, rng)
            image[j] = img
            labels[j, 0] = lab[0]
            if prev is not None:
                labels[j, 1] = prev[0]
        return SampledBatch(image, labels, names)

    def crop_case(self, case: CaseData, forced: bool, rng: np.random.Generator):
        shape = case.image.shape[1:]
        center = None
        voxels = None
        if forced and case.locations:
            keys = list(case.locations)
            voxels = case.locations[keys[int(rng.integers(len(keys)))]]
        elif (forced or self.annotated_only) and case.annotated is not None:
            voxels = case.annotated
        if voxels is not None:
            center = voxels[int(rng.integers(len(voxels)))]
        if self.two_d:
            z = int(center[0]) if center is not None else int(rng.integers(shape[0]))
            arrays = [case.image[:, z], case.labels[:, z]] + (
                [case.previous[:, z]] if case.previous is not None else []
            )
            plane_center = None if center is None else center[1:]
            start = self.crop_start(shape[1:], plane_center, rng)
        else:
            arrays = [case.image, case.labels] + (
                [case.previous] if case.previous is not None else []
            )
            start = self.crop_start(shape, center, rng)
        img = crop_and_pad(arrays[0], start, self.crop, IMAGE_PAD, np.float32)
        lab = crop_and_pad(arrays[1], start, self.crop, LABEL_PAD, np.int16)
        prev = (
            crop_and_pad(arrays[2], start, self.crop, LABEL_PAD, np.int16)
            if len(arrays) > 2
            else None
        )
        return img, lab, prev

    def crop_start(self, shape, center, rng: np.random.Generator) -> list[int]:
        """A random start within :func:`crop_range`, or the one centring ``center`` (held
        by the lower bound only, as the reference's ``get_bbox``)."""
        lows, highs = crop_range(tuple(shape), self.crop, self.patch)
        if center is None:
            return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lows, highs, strict=True)]
        return [
            max(int(c) - size // 2, lo) for c, size, lo in zip(center, self.crop, lows, strict=True)
        ]
