"""Cropping to the non-zero region: the same rule for the fingerprint, preprocessing and inference.

Voxels outside the non-zero mask (zero in every channel, holes filled) are cut away; in a
cropped label map the background outside the mask is marked ``OUTSIDE_LABEL``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from toolkit.core.labels import storage_dtype

OUTSIDE_LABEL = -1  # voxels outside the non-zero mask in a preprocessed label map
_BLOCK = 1 << 24  # voxels per block of the hole filling's last step


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the border filled.

    Same result as ``scipy.ndimage.binary_fill_holes`` (face connectivity) but by one
    labelling pass instead of dilating until nothing changes, which is slow on big images.
    """
    background, _ = ndimage.label(~mask)
    faces = []
    for axis in range(mask.ndim):
        for end in (0, -1):
            index = [slice(None)] * mask.ndim
            index[axis] = end
            faces.append(background[tuple(index)].ravel())
    outside = np.unique(np.concatenate(faces))
    outside = outside[outside > 0]  # background regions that reach the border (0: the mask)
    if not outside.size:
        return np.ones_like(mask)
    # a block at a time: no whole-volume temporaries beside the labelling
    filled = np.empty(mask.shape, dtype=bool)
    flat_in, flat_out = background.reshape(-1), filled.reshape(-1)
    for start in range(0, flat_in.size, _BLOCK):
        flat_out[start : start + _BLOCK] = np.isin(
            flat_in[start : start + _BLOCK], outside, invert=True
        )
    return filled


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel of ``(c, *spatial)``, holes filled."""
    mask = image[0] != 0
    for c in range(1, image.shape[0]):
        mask |= image[c] != 0
    return fill_holes(mask)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open ``[[start, stop], ...]`` per axis around ``mask``; the whole extent when empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return box


def box_slices(box: Sequence[Sequence[int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def crop_to_nonzero(
    image: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop ``(c, *spatial)`` (and ``(1, *spatial)`` labels) to the non-zero region.

    Returns the cropped image, the cropped labels with background outside the mask set to
    ``-1`` (without labels: 0 inside, -1 outside) and the crop box.
    """
    mask = nonzero_mask(image)
    box = bounding_box(mask)
    slices = box_slices(box)
    mask = mask[slices]
    cropped = image[(slice(None), *slices)]
    if seg is None:
        cropped_seg = np.where(mask, 0, OUTSIDE_LABEL).astype(np.int8)[None]
    else:
        cropped_seg = np.array(
            seg[(slice(None), *slices)], dtype=storage_dtype(int(seg.max(initial=0)))
        )
        cropped_seg[0][(cropped_seg[0] == 0) & ~mask] = OUTSIDE_LABEL
    return cropped, cropped_seg, box
