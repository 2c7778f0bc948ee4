"""Choosing the postprocessing of the selected candidate on the cross-validation.

The method's only postprocessing is keeping the largest connected component
(:mod:`toolkit.core.postprocessing`). Two kinds of step are tried, in order:

1. the largest component of the whole foreground (all classes together);
2. then, on top of the first decision, the largest component of each class (for regions,
   of each region: the voxels of its values; removed voxels become background, as nnU-Net
   v2 does).

A step is kept only if the cross-validation mean foreground Dice strictly improves and no
class's mean Dice goes down (means over the cases where Dice is defined). A per-class step
only removes voxels of its own class, so it changes no other class: the per-class steps are
independent, and one pass per case computes them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.labels import LabelModel, target_mask
from toolkit.core.postprocessing import Postprocessing, PostprocessingStep, apply_postprocessing
from toolkit.evaluation.bootstrap import nanmean_last
from toolkit.evaluation.metrics import dice_from_counts

# the four segmentations measured per case; "classes" = largest component of every class
VARIANTS = ("none", "foreground", "classes", "foreground+classes")
_COMPARE_EPS = 1e-12  # float noise, not an improvement


def variant_postprocessing(
    variant: str, labels: list[int], model: LabelModel | None = None
) -> Postprocessing:
    """The postprocessing of a variant; with regions (``model``), per region of ``labels`` (keys)."""
    kept = list(labels) if "classes" in variant else []
    return kept_postprocessing("foreground" in variant, kept, model)


def kept_postprocessing(
    foreground: bool, kept: list[int], model: LabelModel | None = None
) -> Postprocessing:
    """Largest components of the foreground and of the ``kept`` classes (or regions, by key)."""
    if model is not None and model.has_regions:
        regions = model.regions
        return Postprocessing(
            largest_component_foreground=foreground,
            largest_component_regions=[list(regions[k]) for k in kept],
        )
    return Postprocessing(largest_component_foreground=foreground, largest_component_classes=kept)


def class_counts(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: list[int] | Mapping[int, Sequence[int]],
    ignore: int | None = None,
) -> np.ndarray:
    """(classes, 3) voxel counts TP, FP, FN; ``labels`` may map keys to regions' values; voxels
    where the reference holds ``ignore`` are not counted."""
    targets = labels if isinstance(labels, Mapping) else {v: (v,) for v in labels}
    annotated = None if ignore is None else reference != ignore
    out = np.zeros((len(targets), 3), dtype=np.int64)
    for k, values in enumerate(targets.values()):
        ref = target_mask(reference, values)
        pred = target_mask(prediction, values)
        if annotated is not None:
            ref &= annotated
            pred &= annotated
        tp = int(np.count_nonzero(ref & pred))
        out[k] = (tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp)
    return out


def variant_counts(
    reference: np.ndarray,
    prediction: np.ndarray,
    labels: list[int] | Mapping[int, Sequence[int]],
    model: LabelModel | None = None,
) -> np.ndarray:
    """(variants, classes, 3) counts of the segmentation under each of :data:`VARIANTS`."""
    keys = list(labels)
    ignore = model.ignore if model is not None else None
    return np.stack(
        [
            class_counts(
                reference,
                apply_postprocessing(prediction, variant_postprocessing(v, keys, model)),
                labels,
                ignore,
            )
            for v in VARIANTS
        ]
    )


def variant_dice(counts: np.ndarray) -> dict[str, np.ndarray]:
    """``counts``: (cases, variants, classes, 3) -> variant -> (cases, classes) Dice."""
    dice = dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])
    return {v: dice[:, i] for i, v in enumerate(VARIANTS)}


def class_means(dice: np.ndarray) -> np.ndarray:
    """(cases, classes) -> (classes,) means over the cases where defined."""
    defined = ~np.isnan(dice)
    counts = defined.sum(axis=0)
    sums = np.where(defined, dice, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def improves(before: np.ndarray, after: np.ndarray) -> bool:
    """Mean strictly higher and no class lower (a class undefined on either side is not compared)."""
    mean_before, mean_after = float(nanmean_last(before)), float(nanmean_last(after))
    if math.isnan(mean_after) or not (
        math.isnan(mean_before) or mean_after > mean_before + _COMPARE_EPS
    ):
        return False
    both = ~np.isnan(before) & ~np.isnan(after)
    return bool(np.all(after[both] >= before[both] - _COMPARE_EPS))


@dataclass
class PostprocessingChoice:
    postprocessing: Postprocessing
    steps: list[PostprocessingStep]
    dice: np.ndarray  # (cases, classes) with the chosen postprocessing
    dice_before: np.ndarray  # (cases, classes) without


def choose_postprocessing(
    dice: dict[str, np.ndarray],
    labels: list[int],
    label_names: dict[int, str],
    model: LabelModel | None = None,
) -> PostprocessingChoice:
    """Apply the rule of the module docstring to per-case Dice of every variant."""

    def as_dict(means: np.ndarray) -> dict[int, float]:
        return {label: float(means[k]) for k, label in enumerate(labels)}

    current = dice["none"].copy()
    steps = []
    candidate = dice["foreground"]
    before, after = class_means(current), class_means(candidate)
    keep_foreground = improves(before, after)
    steps.append(
        PostprocessingStep(
            "largest connected component of the whole foreground",
            None,
            keep_foreground,
            float(nanmean_last(before)),
            float(nanmean_last(after)),
            as_dict(before),
            as_dict(after),
        )
    )
    if keep_foreground:
        current = candidate.copy()
    per_class = dice["foreground+classes" if keep_foreground else "classes"]
    kind = "region" if model is not None and model.has_regions else "class"
    kept_classes = []
    for k, label in enumerate(labels):
        trial = current.copy()
        trial[:, k] = per_class[:, k]
        before, after = class_means(current), class_means(trial)
        accepted = improves(before, after)
        steps.append(
            PostprocessingStep(
                f"largest connected component of {kind} {label} ({label_names.get(label, label)})",
                label,
                accepted,
                float(nanmean_last(before)),
                float(nanmean_last(after)),
                as_dict(before),
                as_dict(after),
            )
        )
        if accepted:
            current = trial
            kept_classes.append(label)
    return PostprocessingChoice(
        kept_postprocessing(keep_foreground, kept_classes, model),
        steps,
        current,
        dice["none"],
    )
