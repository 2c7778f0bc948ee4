"""Label logic, one owner: which values are foreground, one-hot maps, labels from probabilities.

Every stage asks here (preprocessing's oversampling locations, the loss, validation, the
cascade input, evaluation), so a new kind of label (regions, an ignore value) changes one
module. Label values are those of ``dataset.json``; 0 is background. :class:`LabelModel` says
whether a dataset trains classes or regions and which value, if any, is the ignore label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import DatasetInfo
from toolkit.io.images import label_dtype

if TYPE_CHECKING:  # the batch functions take training's tensors; the torch-free predictor
    import torch  # (:mod:`toolkit.inference.runtime`) imports this module without torch

BACKGROUND = 0


def foreground_labels(labels: Mapping[str, int] | Iterable[int]) -> list[int]:
    """The foreground label values, ascending: a ``{name: value}`` mapping or the values."""
    values = labels.values() if isinstance(labels, Mapping) else labels
    return sorted({int(v) for v in values if int(v) != BACKGROUND})


def one_hot(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``(*spatial)`` labels -> ``(len(values), *spatial)`` float32, one channel per value."""
    return np.stack([labels == v for v in values]).astype(np.float32)


def one_hot_batch(labels: torch.Tensor, values: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``(B, *spatial)`` labels -> ``(B, len(values), *spatial)`` of ``dtype``."""
    import torch

    return torch.stack([(labels == v) for v in values], dim=1).to(dtype)


def storage_dtype(top: int) -> np.dtype:
    """Smallest signed integer type for a stored label map whose values go up to ``top`` (and
    down to -1, the mark outside the non-zero mask)."""
    if top <= 127:
        return np.dtype(np.int8)
    return np.dtype(np.int16) if top <= 32767 else np.dtype(np.int32)


def label_volume(labels: np.ndarray, shape: Sequence[int], what: str) -> np.ndarray:
    """``labels`` as one volume of ``shape`` (a leading channel axis of one is dropped);
    ``what`` names it in the error when it has another shape."""
    volume = np.asarray(labels)
    if volume.ndim == len(shape) + 1:
        volume = volume[0]
    if tuple(volume.shape) != tuple(shape):
        raise ValueError(f"{what} of shape {volume.shape} is not on the grid {tuple(shape)}")
    return volume


# ---------------------------------------------------------------------------------------------
# the label model: classes or regions, and the ignore label (nnU-Net v2's rules)

IGNORE_NAME = "ignore"  # a label of this name marks unannotated voxels
REGION_THRESHOLD = 0.5  # a region is predicted where its sigmoid probability exceeds this
ANNOTATED_KEY = "annotated"  # class-location key of the annotated voxels (datasets with ignore)
OUTSIDE_VALUE = -1  # stored label maps' mark outside the non-zero mask (annotated background)


@dataclass(frozen=True, kw_only=True)
class Target:
    """One thing the network segments and evaluation measures: a foreground class, or a region.

    ``key`` is the class's label value, or the region's position (1, 2, ...) among the
    regions of ``dataset.json``; ``values`` are the label values it covers."""

    key: int
    name: str
    values: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class LabelModel:
    """What the labels of a dataset mean, read once from ``dataset.json`` by :func:`label_model`.

    * Classes (the default): one softmax output per value from background up to the highest.
    * Regions (some label maps to a list of values): one sigmoid output per foreground region,
      in ``dataset.json``'s order; a label map is made back through ``regions_class_order``.
    * The ignore label (a label named ``ignore``, the highest value): unannotated voxels; no
      output, no loss, no metric, never predicted.
    """

    targets: tuple[Target, ...]  # foreground classes or regions, in output order
    values: tuple[int, ...]  # annotated label values, background included, ignore excluded
    ignore: int | None = None
    regions_class_order: tuple[int, ...] | None = None  # set exactly for region models

    @property
    def has_regions(self) -> bool:
        return self.regions_class_order is not None

    @property
    def has_ignore(self) -> bool:
        return self.ignore is not None

    @property
    def num_outputs(self) -> int:
        """Network outputs: one per region, or background plus every class value."""
        if self.has_regions:
            return len(self.targets)
        return max(self.values) + 1

    @property
    def foreground_values(self) -> list[int]:
        """Annotated foreground label values (a cascade's one-hot channels)."""
        return [v for v in self.values if v != BACKGROUND]

    @property
    def declared_values(self) -> list[int]:
        """Every value a label map may hold: the annotated ones and the ignore value."""
        return sorted({*self.values, *([self.ignore] if self.ignore is not None else [])})

    @property
    def names(self) -> dict[int, str]:
        """Target key -> name (evaluation's and the pseudo-Dice's columns)."""
        return {t.key: t.name for t in self.targets}

    @property
    def value_names(self) -> dict[int, str]:
        """Predicted label value -> name (a picture's legend): a class's name, or the name of
        the region whose ``regions_class_order`` entry writes the value."""
        if not self.has_regions:
            return self.names
        return {v: t.name for t, v in zip(self.targets, self.regions_class_order, strict=True)}

    @property
    def regions(self) -> dict[int, tuple[int, ...]]:
        """Target key -> the label values it covers."""
        return {t.key: t.values for t in self.targets}

    def location_groups(self) -> dict[str, tuple[int, ...]]:
        """Class-location keys -> values, for foreground oversampling: one per target, and with
        an ignore label the annotated voxels (:data:`ANNOTATED_KEY`, the outside mark included)."""
        groups = {location_key(t): t.values for t in self.targets}
        if self.has_ignore:
            groups[ANNOTATED_KEY] = (OUTSIDE_VALUE, *self.values)
        return groups


def location_key(target: Target) -> str:
    """A target's key in the preprocessed class locations: its values, comma-separated."""
    return ",".join(str(v) for v in target.values)


def label_model(
    labels: Mapping[str, int | Sequence[int]],
    regions_class_order: Sequence[int] | None = None,
    source: str | Path | None = None,
) -> LabelModel:
    """The label model of ``dataset.json``'s ``labels`` and ``regions_class_order``.

    nnU-Net v2's rules: the dataset uses regions when any label maps to more than one value;
    then every non-background, non-ignore label is a region and ``regions_class_order`` must
    give one label value per region. The ``ignore`` label must be one integer, one above the
    highest other value. Problems are :class:`ToolkitError`\\ s naming ``source``.
    """
    ignore_value = labels.get(IGNORE_NAME)
    if ignore_value is not None and (
        isinstance(ignore_value, bool) or not isinstance(ignore_value, int)
    ):
        raise ToolkitError(
            f"label '{IGNORE_NAME}' must be one integer value, not {ignore_value!r}", source
        )
    entries = {
        name: tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)
        for name, value in labels.items()
        if name != IGNORE_NAME
    }
    values = tuple(sorted({v for vs in entries.values() for v in vs}))
    if ignore_value is not None and ignore_value != max(values) + 1:
        raise ToolkitError(
            f"label '{IGNORE_NAME}' must have the highest value, one above the others "
            f"({max(values) + 1}), not {ignore_value}",
            source,
        )
    has_regions = any(len(set(vs)) > 1 for vs in entries.values())
    if not has_regions:
        targets = tuple(
            Target(key=v, name=name, values=(v,))
            for v, name in sorted(_first_names(entries).items())
            if v != BACKGROUND
        )
        return LabelModel(targets=targets, values=values, ignore=ignore_value)
    regions = [(n, vs) for n, vs in entries.items() if set(vs) != {BACKGROUND}]
    targets = tuple(
        Target(key=i, name=name, values=vs) for i, (name, vs) in enumerate(regions, start=1)
    )
    order = _regions_class_order(regions_class_order, len(targets), source)
    if ignore_value is not None and ignore_value in order:
        raise ToolkitError(
            f"'regions_class_order' writes the ignore value {ignore_value}, which is never predicted",
            source,
        )
    return LabelModel(
        targets=targets, values=values, ignore=ignore_value, regions_class_order=order
    )


def dataset_label_model(info: DatasetInfo, source: str | Path | None = None) -> LabelModel:
    """The label model a converted dataset's ``dataset.json`` (at ``source``) declares."""
    return label_model(info.labels, info.regions_class_order, source)


def _first_names(entries: Mapping[str, tuple[int, ...]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, (value, *_) in entries.items():
        names.setdefault(value, name)
    return names


def _regions_class_order(
    order: Sequence[int] | None, num_regions: int, source: str | Path | None
) -> tuple[int, ...]:
    if order is None:
        raise ToolkitError(
            "labels declare regions (a list of values) but 'regions_class_order' is missing: "
            "give the label value written for each region, in the order of the regions",
            source,
        )
    if not isinstance(order, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in order
    ):
        raise ToolkitError(
            f"'regions_class_order' must be a list of positive label values, not {order!r}", source
        )
    if len(order) != num_regions:
        raise ToolkitError(
            f"'regions_class_order' has {len(order)} entries but the labels declare "
            f"{num_regions} regions",
            source,
        )
    return tuple(int(v) for v in order)


# ---------------------------------------------------------------------------------------------
# label maps <-> what the network sees and says


def target_mask(segmentation: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Voxels of a label map that belong to a target (one of ``values``)."""
    if len(values) == 1:
        return segmentation == values[0]
    return np.isin(segmentation, np.asarray(values))


def region_batch(labels: torch.Tensor, model: LabelModel) -> torch.Tensor:
    """``(B, 1, *spatial)`` label maps -> ``(B, R, *spatial)`` bool, one channel per region."""
    import torch

    channels = []
    for target in model.targets:
        if len(target.values) == 1:
            channels.append(labels[:, 0] == target.values[0])
        else:
            wanted = torch.as_tensor(target.values, device=labels.device, dtype=labels.dtype)
            channels.append(torch.isin(labels[:, 0], wanted))
    return torch.stack(channels, dim=1)


def annotated_batch(labels: torch.Tensor, model: LabelModel) -> torch.Tensor | None:
    """``(B, 1, *spatial)`` bool, true where annotated; ``None`` without an ignore label."""
    if model.ignore is None:
        return None
    return labels != model.ignore


def probabilities_inplace(logits: np.ndarray, model: LabelModel) -> None:
    """Logits ``(k, *spatial)`` float32 -> probabilities, in place: softmax over the classes,
    or one sigmoid per region."""
    if model.has_regions:
        for channel in logits:
            np.negative(channel, out=channel)
            np.exp(channel, out=channel)
            channel += 1.0
            np.reciprocal(channel, out=channel)
        return
    peak = logits.max(axis=0)
    total = np.zeros_like(peak)
    for channel in logits:
        channel -= peak
        np.exp(channel, out=channel)
        total += channel
    for channel in logits:
        channel /= total


def segmentation_from_probabilities(
    probabilities: np.ndarray, model: LabelModel, out: np.ndarray | None = None
) -> np.ndarray:
    """Probabilities ``(k, *spatial)`` -> a label map: the argmax over classes, or for regions
    ``regions_class_order[i]`` wherever region ``i``'s probability exceeds 0.5, later regions
    written over earlier ones (nnU-Net v2's rule). Written into ``out`` when given."""
    if probabilities.shape[0] != model.num_outputs:
        raise ValueError(
            f"{probabilities.shape[0]} probability channels, the labels have {model.num_outputs} outputs"
        )
    return labels_from_probabilities(probabilities, model.regions_class_order, out)


def labels_from_probabilities(
    probabilities: np.ndarray,
    regions_class_order: Sequence[int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`segmentation_from_probabilities` for saved probabilities, which carry only the
    regions' written values: the argmax without them, the regions' rule with them."""
    top = max(regions_class_order or (probabilities.shape[0] - 1,))
    if out is None:
        out = np.zeros(probabilities.shape[1:], dtype=label_dtype(top))
    if regions_class_order is None:
        out[...] = np.argmax(probabilities, axis=0)
        return out
    if len(regions_class_order) != probabilities.shape[0]:
        raise ValueError(
            f"{probabilities.shape[0]} region probabilities but {len(regions_class_order)} written values"
        )
    out[...] = BACKGROUND
    for channel, value in zip(probabilities, regions_class_order, strict=True):
        out[channel > REGION_THRESHOLD] = value
    return out
