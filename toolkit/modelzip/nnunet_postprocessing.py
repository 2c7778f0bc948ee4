"""nnU-Net v2's ``postprocessing.json`` (the readable twin of ``postprocessing.pkl``) as ours.

nnU-Net's ``determine_postprocessing`` tries "keep the largest foreground component" (its
kwargs name every foreground label) and then, label by label, "keep the largest component of
this label"; ``postprocessing_fns`` and ``postprocessing_kwargs`` list the steps kept. Both
map onto :class:`~toolkit.core.postprocessing.Postprocessing`. Anything else (regions, other
functions) is not understood and gives ``None``: the caller leaves postprocessing out and
says so. The pickle itself is never read.
"""

from __future__ import annotations

from typing import Any

from toolkit.core.postprocessing import Postprocessing

KEEP_LARGEST = "remove_all_but_largest_component_from_segmentation"


def convert_postprocessing(
    data: Any, foreground: list[int], regions: list[tuple[int, ...]] | None = None
) -> Postprocessing | None:
    """``postprocessing.json``'s steps as ours, or None when they do not map onto ours.

    ``regions``: a region model's regions (their values), whose steps name a region."""
    if not isinstance(data, dict):
        return None
    functions = data.get("postprocessing_fns")
    kwargs = data.get("postprocessing_kwargs")
    if not isinstance(functions, list) or not isinstance(kwargs, list):
        return None
    if len(functions) != len(kwargs):
        return None
    whole_foreground, classes, kept_regions = False, [], []
    region_values = [sorted(r) for r in regions or []]
    for function, arguments in zip(functions, kwargs, strict=True):
        if function != KEEP_LARGEST or not isinstance(arguments, dict):
            return None
        target = arguments.get("labels_or_regions")
        if isinstance(target, list) and len(target) == 1:
            target = target[0]
        if isinstance(target, list) and sorted(target) == sorted(foreground):
            whole_foreground = True
        elif isinstance(target, list) and sorted(target) in region_values:
            kept_regions.append(sorted(target))
        elif regions is not None and isinstance(target, int) and [target] in region_values:
            kept_regions.append([target])
        elif (
            regions is None
            and isinstance(target, int)
            and not isinstance(target, bool)
            and target in foreground
        ):
            classes.append(target)
        else:
            return None
    return Postprocessing(whole_foreground, sorted(set(classes)), kept_regions)
