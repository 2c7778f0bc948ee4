"""A picture of a segmentation: one slice of the image, the reference and the prediction.

Drawn beside each prediction (``toolkit predict --preview``, without a reference) and in the
evaluation report (best, median and worst validation case per class). matplotlib on the Agg
canvas with ``Figure`` objects only: no display, no pyplot global state.

The picture is a row of panels: the image alone, the image with the reference, the image with
the prediction. A label is a transparent fill with a solid outline in its colour; a label's
colour is :func:`label_colour` of its value, the same in every picture, and the legend names
every class given. The rules are pure functions on arrays:

* :func:`slice_axis`: an axis of length one when there is one (a 2D image), else the axis with
  the largest spacing, the first of equals (``z`` when isotropic);
* :func:`choose_slice`: the slice holding the most voxels of the class in the reference, else
  in the prediction; without a class (or where neither holds it) the most foreground; an
  empty volume: the middle slice;
* :func:`intensity_window`: the 0.5 and 99.5 percentiles of the slice shown.

A slice across ``z`` is drawn with ``z`` upward; every slice keeps the voxels' physical
aspect ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from toolkit.io.atomic import write_with
from toolkit.io.images import strip_image_suffix
from toolkit.workspace import PREVIEW_ENDING

DPI = 100
PANEL_INCHES = 3.0  # width of one panel: a picture is panels * 300 pixels wide
PANEL_PAD_INCHES = 0.05  # either side of a panel
TITLE_INCHES = 0.4
HEADING_INCHES = 0.3
LEGEND_ROW_INCHES = 0.25
LEGEND_PAD_INCHES = 0.1
ASPECT_LIMITS = (0.25, 2.5)  # a panel's height over its width, clamped for very flat slices
WINDOW_PERCENTILES = (0.5, 99.5)
FILL_ALPHA = 0.4
# distinct colours (Trubetskoy's list, most distinct first); label v > 0 gets entry (v - 1) % 20
LABEL_COLOURS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#ffe119",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#fffac8",
    "#800000",
    "#aaffc3",
    "#808000",
    "#ffd8b1",
    "#000075",
    "#a9a9a9",
)
AXIS_NAMES = ("z", "y", "x")


def label_colour(label: int) -> str:
    """The colour of a foreground label value (hex), the same in every picture."""
    if label <= 0:
        raise ValueError(f"label {label} is background: it has no colour")
    return LABEL_COLOURS[(label - 1) % len(LABEL_COLOURS)]


def preview_path(label_path: str | Path) -> Path:
    """The picture beside a written label map: ``CASE.nii.gz`` -> ``CASE_preview.png``."""
    label_path = Path(label_path)
    return label_path.with_name(strip_image_suffix(label_path.name) + PREVIEW_ENDING)


def slice_axis(shape: Sequence[int], spacing_zyx: Sequence[float]) -> int:
    """The axis to slice across: a length-one axis (2D), else the largest spacing (first of equals)."""
    if len(shape) != 3 or len(spacing_zyx) != 3:
        raise ValueError(f"expected a (z, y, x) shape and spacing, not {shape} and {spacing_zyx}")
    flat = [a for a in range(3) if shape[a] == 1]
    if flat:
        return flat[0]
    return int(np.argmax(np.asarray(spacing_zyx, dtype=float)))


def _counts(mask: np.ndarray, axis: int) -> np.ndarray:
    others = tuple(a for a in range(mask.ndim) if a != axis)
    return np.count_nonzero(mask, axis=others)


def choose_slice(
    axis: int,
    *,
    label: int | None = None,
    reference: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
) -> int:
    """Index along ``axis`` of the slice to show (see the module's docstring for the rule)."""
    maps = [m for m in (reference, prediction) if m is not None]
    if not maps:
        raise ValueError("choose_slice needs a reference or a prediction")
    masks = [m == label for m in maps] if label is not None else []
    masks += [m > 0 for m in maps]
    for mask in masks:
        counts = _counts(mask, axis)
        if counts.any():
            return int(np.argmax(counts))  # the first of equals
    return maps[0].shape[axis] // 2


def intensity_window(values: np.ndarray) -> tuple[float, float]:
    """The grey-value range shown: percentiles 0.5 and 99.5 of the finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, WINDOW_PERCENTILES))
    if not high > low:
        high = low + 1.0
    return low, high


@dataclass(frozen=True)
class SliceView:
    """Which slice a picture shows."""

    axis: int
    index: int
    size: int  # slices along the axis

    def describe(self) -> str:
        if self.size == 1:
            return "2D"
        return f"{AXIS_NAMES[self.axis]} {self.index} of {self.size}"


def _plane(volume: np.ndarray, view: SliceView) -> np.ndarray:
    return np.take(volume, view.index, axis=view.axis)


def _as_volume(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"{what} must be (z, y, x) or (y, x), not of shape {array.shape}")
    return array


def _overlay(labels: np.ndarray) -> np.ndarray:
    """RGBA of a label plane: each foreground value its colour at FILL_ALPHA, background clear."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    for value in np.unique(labels):
        if value <= 0:
            continue
        colour = label_colour(int(value))
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        rgba[labels == value] = (*rgb, FILL_ALPHA)
    return rgba


def _draw_panel(ax, plane, window, aspect, origin, labels=None, heading="") -> None:
    ax.imshow(
        plane,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        aspect=aspect,
        origin=origin,
        interpolation="nearest",
    )
    if labels is not None:
        ax.imshow(_overlay(labels), aspect=aspect, origin=origin, interpolation="nearest")
        for value in np.unique(labels):
            if value > 0:
                mask = (labels == value).astype(np.float32)
                if 0 < mask.sum() < mask.size:
                    ax.contour(
                        mask, levels=[0.5], colors=[label_colour(int(value))], linewidths=1.0
                    )
    ax.set_title(heading, fontsize=9)
    ax.set_axis_off()


@dataclass(frozen=True)
class PictureLayout:
    """Heights in inches, top to bottom: the title, the panel headings, the panels, the legend."""

    title: float
    headings: float
    panels: float
    legend: float

    @property
    def height(self) -> float:
        return self.title + self.headings + self.panels + self.legend


def legend_columns(panels: int) -> int:
    """Classes per legend row: one more than the panels (names of about 30 characters fit)."""
    return panels + 1


def picture_layout(
    plane_shape: Sequence[int], pixel_aspect: float, classes: int, titled: bool, panels: int
) -> PictureLayout:
    """A panel is as high as the slice's physical aspect says (clamped); the legend has rows of
    :func:`legend_columns` classes."""
    rows, cols = plane_shape
    ratio = min(max(rows * pixel_aspect / max(cols, 1), ASPECT_LIMITS[0]), ASPECT_LIMITS[1])
    legend_rows = math.ceil(classes / legend_columns(panels))
    return PictureLayout(
        title=TITLE_INCHES if titled else 0.0,
        headings=HEADING_INCHES,
        panels=PANEL_INCHES * ratio,
        legend=LEGEND_ROW_INCHES * legend_rows + (LEGEND_PAD_INCHES if legend_rows else 0.0),
    )


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing_zyx: Sequence[float],
    class_names: Mapping[int, str],
    reference: np.ndarray | None = None,
    label: int | None = None,
    title: str | None = None,
) -> SliceView:
    """Write the picture (PNG, atomically) and return the slice it shows.

    ``image``: one channel, ``(z, y, x)`` (a 2D image as ``(1, y, x)`` or ``(y, x)``);
    ``prediction`` and ``reference``: label maps of the same shape; ``spacing_zyx``: mm in
    array order (``(y, x)`` will do for a 2D image); ``class_names``: foreground label value -> name, for the legend; ``label``:
    the class the slice is chosen for (None: the most foreground).
    """
    image = _as_volume(image, "the image")
    prediction = _as_volume(prediction, "the prediction")
    if reference is not None:
        reference = _as_volume(reference, "the reference")
    for name, other in (("prediction", prediction), ("reference", reference)):
        if other is not None and other.shape != image.shape:
            raise ValueError(f"the {name} has shape {other.shape}, the image {image.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)[-3:]
    if len(spacing) == 2:
        spacing = (1.0, *spacing)
    axis = slice_axis(image.shape, spacing)
    index = choose_slice(axis, label=label, reference=reference, prediction=prediction)
    view = SliceView(axis, index, image.shape[axis])

    plane = _plane(image, view).astype(np.float32)
    rows_axis, cols_axis = (a for a in range(3) if a != axis)
    aspect = spacing[rows_axis] / spacing[cols_axis]
    origin = "lower" if rows_axis == 0 else "upper"  # a slice across y or x: z upward
    window = intensity_window(plane)
    panels = [("image" if view.size == 1 else f"image, {view.describe()}", None)]
    if reference is not None:
        panels.append(("reference", _plane(reference, view)))
    panels.append(("prediction", _plane(prediction, view)))

    layout = picture_layout(plane.shape, aspect, len(class_names), title is not None, len(panels))
    width = PANEL_INCHES * len(panels)
    # placed by hand (no layout engine: drawing many pictures stays cheap)
    figure = Figure(figsize=(width, layout.height), dpi=DPI)
    FigureCanvasAgg(figure)
    for i, (heading, labels) in enumerate(panels):
        ax = figure.add_axes(
            (
                (i * PANEL_INCHES + PANEL_PAD_INCHES) / width,
                layout.legend / layout.height,
                (PANEL_INCHES - 2 * PANEL_PAD_INCHES) / width,
                layout.panels / layout.height,
            )
        )
        _draw_panel(ax, plane, window, aspect, origin, labels, heading)
    if title is not None:
        figure.text(
            0.5,
            1 - 0.5 * layout.title / layout.height,
            title,
            ha="center",
            va="center",
            fontsize=10,
        )
    if class_names:
        handles = [
            Patch(facecolor=label_colour(v), edgecolor=label_colour(v), label=f"{v}: {name}")
            for v, name in sorted(class_names.items())
        ]
        figure.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            ncols=min(legend_columns(len(panels)), len(handles)),
            fontsize=8,
            frameon=False,
        )
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
    return view
