"""``toolkit convert --regions``: regions declared for a task whose ``dataset.json`` has none.

Two forms, both giving nnU-Net v2's ``labels`` (region name -> label values) and
``regions_class_order``:

* text: ``'whole tumour=1,2,3;tumour core=2,3;enhancing tumour=3'``. Each region's written
  value (its ``regions_class_order`` entry) is the one value it holds that no later region
  holds (here 1, 2, 3: BraTS's labels 1 oedema, 2 non-enhancing and 3 enhancing tumour);
  when that is not a single value, use the JSON form.
* a JSON file: ``{"labels": {"whole tumour": [1, 2, 3], ...}, "regions_class_order": [1, 2, 3]}``.

The source's background (and its ``ignore`` label, if any) are kept; every region's values
must be label values the source declares. What the result means is then checked by
:func:`toolkit.core.labels.label_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit.core.labels import IGNORE_NAME, label_model
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import BACKGROUND, parse_labels, parse_regions_class_order
from toolkit.io.json_files import read_json

OPTION = "--regions"
EXAMPLE = "'whole tumour=1,2,3;tumour core=2,3;enhancing tumour=3'"


@dataclass(frozen=True, kw_only=True)
class RegionDeclaration:
    regions: dict[str, list[int]]  # name -> label values, in output order
    regions_class_order: list[int]


def parse_region_option(text: str) -> RegionDeclaration:
    """The ``--regions`` value: a JSON file's path, or the text form."""
    candidate = Path(text).expanduser()
    if text.strip().endswith(".json") or candidate.is_file():
        return _from_json_file(candidate)
    regions: dict[str, list[int]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, values_text = part.partition("=")
        name = name.strip()
        try:
            values = [int(v) for v in values_text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not sep or not name or not values or any(v <= 0 for v in values):
            raise ToolkitError(
                f"{OPTION}: {part!r} is not NAME=VALUE,VALUE,... with positive label values "
                f"(e.g. {EXAMPLE})"
            )
        if name in regions:
            raise ToolkitError(f"{OPTION}: region {name!r} is given twice")
        regions[name] = values
    if not regions:
        raise ToolkitError(f"{OPTION} declares no region (e.g. {EXAMPLE})")
    return RegionDeclaration(regions=regions, regions_class_order=_written_values(regions))


def _written_values(regions: dict[str, list[int]]) -> list[int]:
    names = list(regions)
    order = []
    for i, name in enumerate(names):
        later = {v for n in names[i + 1 :] for v in regions[n]}
        own = sorted(set(regions[name]) - later)
        if len(own) != 1:
            raise ToolkitError(
                f"{OPTION}: region {name!r} holds {len(own)} values no later region holds "
                f"({own}), so its written value is not clear; give a JSON file with "
                "'labels' and 'regions_class_order'"
            )
        order.append(own[0])
    return order


def _from_json_file(path: Path) -> RegionDeclaration:
    data = read_json(path, what="regions file", kind=dict)
    labels = parse_labels({BACKGROUND: 0, **dict(data.get("labels") or {})}, path)
    regions = {
        name: list(values) if isinstance(values, list) else [values]
        for name, values in labels.items()
        if name not in (BACKGROUND, IGNORE_NAME)
    }
    order = parse_regions_class_order(data.get("regions_class_order"), path)
    if order is None:
        raise ToolkitError("has no 'regions_class_order'", path)
    return RegionDeclaration(regions=regions, regions_class_order=order)


def labels_with_regions(
    source_labels: dict[str, int | list[int]], declaration: RegionDeclaration, source: Path
) -> dict[str, int | list[int]]:
    """The converted dataset's ``labels``: the source's background, the regions, its ignore label."""
    declared = {
        v
        for name, value in source_labels.items()
        if name != IGNORE_NAME
        for v in (value if isinstance(value, list) else [value])
    }
    for name, values in declaration.regions.items():
        unknown = sorted(set(values) - declared)
        if unknown:
            raise ToolkitError(
                f"{OPTION}: region {name!r} holds label values {unknown} the source does not declare "
                f"(declared: {sorted(declared)})",
                source,
            )
    labels: dict[str, int | list[int]] = {BACKGROUND: 0}
    labels.update({name: list(values) for name, values in declaration.regions.items()})
    if IGNORE_NAME in source_labels:
        labels[IGNORE_NAME] = source_labels[IGNORE_NAME]
    label_model(labels, declaration.regions_class_order, source)
    return labels
