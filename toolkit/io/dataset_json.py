"""The converted dataset's ``dataset.json`` and the case files it describes.

The converted layout is nnU-Net v2's raw layout::

    raw/dataset.json                 channel_names, labels (name -> value, or a region's list
                                     of values), regions_class_order, numTraining, file_ending
    raw/imagesTr/CASE_0000.nii.gz    one file per channel
    raw/labelsTr/CASE.nii.gz         integer labels
    raw/imagesTs/CASE_0000.nii.gz    test images (no labels)

Cases are found from the files, not from a list in ``dataset.json``: a training case is any
``CASE`` with a label file or a channel file in ``imagesTr``. Files whose names start with
``.`` are never cases. Whether every expected file exists is :mod:`toolkit.verify.checks`' job;
:func:`training_cases` lists the paths a case *should* have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import MissingStageError, ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.confine import name_problem
from toolkit.io.json_files import read_json
from toolkit.workspace import FILE_ENDING, DatasetPaths, RawFolder, channel_file, label_file

# keys of dataset.json, spelled once
KEY_NAME = "name"
KEY_DESCRIPTION = "description"
KEY_CHANNEL_NAMES = "channel_names"
KEY_LABELS = "labels"
KEY_NUM_TRAINING = "numTraining"
KEY_FILE_ENDING = "file_ending"
KEY_SOURCE = "source"
KEY_LICENCE = "licence"
KEY_REFERENCE = "reference"
KEY_REGIONS_CLASS_ORDER = "regions_class_order"
BACKGROUND = "background"


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a converted dataset."""

    channel_names: dict[str, str]  # {"0": "T2", "1": "ADC"}: channel index (as text) -> name
    # {"background": 0, "edema": 1, ...}; a region maps to its values: {"tumour core": [2, 3]}
    labels: dict[str, int | list[int]]
    num_training: int
    file_ending: str = FILE_ENDING
    name: str = ""
    description: str = ""
    source: str = ""  # where the data came from (the converted task folder or archive)
    licence: str = ""
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # other keys, written back unchanged
    # with regions: the label value written for each region, in the regions' order
    regions_class_order: list[int] | None = None

    # derived views
    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def channels(self) -> list[str]:
        """Channel names in channel order (``channels[0]`` is ``CASE_0000``)."""
        return [self.channel_names[str(i)] for i in range(self.num_channels)]

    @property
    def label_values(self) -> list[int]:
        """All declared label values (regions' values and the ignore value included), ascending."""
        values: set[int] = set()
        for value in self.labels.values():
            values.update(value if isinstance(value, list) else [value])
        return sorted(values)

    @property
    def num_classes(self) -> int:
        """Outputs of a network: background plus one per foreground label."""
        return len(self.label_values)

    @property
    def label_names(self) -> dict[int, str]:
        """Value -> name (the first name declared for a value)."""
        names: dict[int, str] = {}
        for name, value in self.labels.items():
            if not isinstance(value, list):
                names.setdefault(value, name)
        return names

    # JSON
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.name:
            data[KEY_NAME] = self.name
        if self.description:
            data[KEY_DESCRIPTION] = self.description
        data[KEY_CHANNEL_NAMES] = dict(self.channel_names)
        data[KEY_LABELS] = {
            k: list(v) if isinstance(v, list) else v for k, v in self.labels.items()
        }
        if self.regions_class_order is not None:
            data[KEY_REGIONS_CLASS_ORDER] = list(self.regions_class_order)
        data[KEY_NUM_TRAINING] = self.num_training
        data[KEY_FILE_ENDING] = self.file_ending
        if self.source:
            data[KEY_SOURCE] = self.source
        if self.licence:
            data[KEY_LICENCE] = self.licence
        if self.reference:
            data[KEY_REFERENCE] = self.reference
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_json(cls, data: Any, path: str | Path | None = None) -> DatasetInfo:
        """Parse and check a ``dataset.json`` document; problems name ``path``."""
        if not isinstance(data, dict):
            raise ToolkitError("dataset.json must hold a JSON object", path)
        channel_names = parse_channel_names(data.get(KEY_CHANNEL_NAMES), path)
        labels = parse_labels(data.get(KEY_LABELS), path)
        num_training = data.get(KEY_NUM_TRAINING)
        if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
            raise ToolkitError(
                f"'{KEY_NUM_TRAINING}' must be a non-negative integer, not {num_training!r}", path
            )
        file_ending = data.get(KEY_FILE_ENDING, FILE_ENDING)
        if (
            not isinstance(file_ending, str)
            or not file_ending.startswith(".")
            or name_problem(f"CASE{file_ending}") is not None  # it ends file names
        ):
            raise ToolkitError(
                f"'{KEY_FILE_ENDING}' must be a file ending such as '.nii.gz', not {file_ending!r}",
                path,
            )
        known = {
            KEY_NAME,
            KEY_DESCRIPTION,
            KEY_CHANNEL_NAMES,
            KEY_LABELS,
            KEY_NUM_TRAINING,
            KEY_FILE_ENDING,
            KEY_SOURCE,
            KEY_LICENCE,
            KEY_REFERENCE,
            KEY_REGIONS_CLASS_ORDER,
        }
        return cls(
            channel_names=channel_names,
            labels=labels,
            num_training=num_training,
            file_ending=file_ending,
            name=_text(data.get(KEY_NAME)),
            description=_text(data.get(KEY_DESCRIPTION)),
            source=_text(data.get(KEY_SOURCE)),
            licence=_text(data.get(KEY_LICENCE)),
            reference=_text(data.get(KEY_REFERENCE)),
            extra={k: v for k, v in data.items() if k not in known},
            regions_class_order=parse_regions_class_order(data.get(KEY_REGIONS_CLASS_ORDER), path),
        )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse_channel_names(value: Any, path: str | Path | None = None) -> dict[str, str]:
    """``{"0": "T2", "1": "ADC"}`` with keys 0..n-1 (keys may be given as numbers)."""
    if not isinstance(value, dict) or not value:
        raise ToolkitError(
            f'\'{KEY_CHANNEL_NAMES}\' must map channel numbers to names, e.g. {{"0": "CT"}}', path
        )
    result: dict[str, str] = {}
    for key, name in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ToolkitError(
                f"'{KEY_CHANNEL_NAMES}' key {key!r} is not a channel number", path
            ) from None
        if not isinstance(name, str) or not name:
            raise ToolkitError(
                f"'{KEY_CHANNEL_NAMES}' entry {key!r} must be a non-empty name, not {name!r}", path
            )
        result[str(index)] = name
    expected = [str(i) for i in range(len(result))]
    if sorted(result, key=int) != expected:
        raise ToolkitError(
            f"'{KEY_CHANNEL_NAMES}' keys must be 0..{len(result) - 1}, not {sorted(result, key=int)}",
            path,
        )
    return {k: result[k] for k in expected}


def parse_labels(value: Any, path: str | Path | None = None) -> dict[str, int | list[int]]:
    """``{"background": 0, "liver": 1}`` (name -> value), with background 0.

    MSD's inverted form ``{"0": "background", "1": "liver"}`` is accepted too. A region maps
    its name to a list of values (nnU-Net v2's form, ``{"tumour core": [2, 3]}``); what labels
    and regions mean (the ignore label, ``regions_class_order``) is
    :func:`toolkit.core.labels.label_model`'s to check.
    """
    if not isinstance(value, dict) or not value:
        raise ToolkitError(
            f'\'{KEY_LABELS}\' must map label names to values, e.g. {{"background": 0, "tumour": 1}}',
            path,
        )
    if all(isinstance(v, str) for v in value.values()) and all(_is_int_text(k) for k in value):
        value = {name: int(k) for k, name in value.items()}  # MSD style value -> name
    labels: dict[str, int | list[int]] = {}
    for name, v in value.items():
        if isinstance(v, list | tuple):
            if not v or not all(_is_label_value(x) for x in v):
                raise ToolkitError(
                    f"region {name!r} must list non-negative integer label values, not {list(v)!r}",
                    path,
                )
            labels[str(name)] = [int(x) for x in v]
            continue
        if not _is_label_value(v):
            raise ToolkitError(
                f"label {name!r} must have a non-negative integer value, not {v!r}", path
            )
        labels[str(name)] = v
    if 0 not in labels.values():
        raise ToolkitError(f"'{KEY_LABELS}' must declare the background as value 0", path)
    values = [v for v in labels.values() if not isinstance(v, list)]
    if len(set(values)) != len(values):
        raise ToolkitError(f"'{KEY_LABELS}' gives two names the same value: {labels}", path)
    if any(isinstance(v, list) for v in labels.values()):
        return labels  # regions keep their declared order: it is the order of the outputs
    return dict(sorted(labels.items(), key=lambda item: item[1]))


def _is_label_value(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def parse_regions_class_order(value: Any, path: str | Path | None = None) -> list[int] | None:
    """``regions_class_order``: absent, or a list of positive label values."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(_is_label_value(v) and v > 0 for v in value):
        raise ToolkitError(
            f"'{KEY_REGIONS_CLASS_ORDER}' must be a list of positive label values, not {value!r}",
            path,
        )
    return [int(v) for v in value]


def _is_int_text(key: Any) -> bool:
    try:
        int(key)
    except (TypeError, ValueError):
        return False
    return True


def read_dataset_info(path: str | Path) -> DatasetInfo:
    """A ``dataset.json`` file anywhere (the raw folder, a model folder, a container)."""
    data = read_json(path, what="dataset.json", kind=object)
    return DatasetInfo.from_json(data, path)


def load_dataset_info(paths: DatasetPaths | RawFolder) -> DatasetInfo:
    """The converted dataset's ``raw/dataset.json``; says to run convert when it is missing."""
    if not paths.dataset_json.is_file():
        if isinstance(paths, DatasetPaths):
            raise MissingStageError(paths.dataset_json, f"toolkit convert TASK --name {paths.name}")
        raise ToolkitError("dataset.json not found", paths.dataset_json)
    return read_dataset_info(paths.dataset_json)


def write_dataset_info(path: str | Path, info: DatasetInfo) -> None:
    write_json(path, info.to_json())


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: one image per channel, and the label for training cases."""

    case: str
    images: list[Path]
    label: Path | None = None


def _channel_pattern(file_ending: str) -> re.Pattern[str]:
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + r"$")


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def cases_in_images_folder(folder: Path, file_ending: str) -> list[str]:
    """Case identifiers of the ``CASE_NNNN<ending>`` files in ``folder`` (hidden files skipped)."""
    if not folder.is_dir():
        return []
    pattern = _channel_pattern(file_ending)
    cases = set()
    for p in folder.iterdir():
        if _is_hidden(p):
            continue
        m = pattern.match(p.name)
        if m:
            cases.add(m.group("case"))
    return sorted(cases)


def cases_in_labels_folder(folder: Path, file_ending: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name[: -len(file_ending)]
        for p in folder.iterdir()
        if not _is_hidden(p) and p.name.endswith(file_ending) and len(p.name) > len(file_ending)
    )


def case_files(
    images_dir: Path, labels_dir: Path | None, case: str, info: DatasetInfo
) -> CaseFiles:
    images = [
        images_dir / channel_file(case, c, info.file_ending) for c in range(info.num_channels)
    ]
    label = labels_dir / label_file(case, info.file_ending) if labels_dir is not None else None
    return CaseFiles(case=case, images=images, label=label)


def training_cases(
    paths: DatasetPaths | RawFolder, info: DatasetInfo | None = None
) -> list[CaseFiles]:
    """Every training case (sorted): a case with a label or a channel file in ``imagesTr``."""
    info = info or load_dataset_info(paths)
    cases = set(cases_in_images_folder(paths.images_tr, info.file_ending))
    cases.update(cases_in_labels_folder(paths.labels_tr, info.file_ending))
    return [case_files(paths.images_tr, paths.labels_tr, c, info) for c in sorted(cases)]


def test_cases(paths: DatasetPaths | RawFolder, info: DatasetInfo | None = None) -> list[CaseFiles]:
    """Every test case in ``imagesTs`` (sorted), without labels; empty when there is none."""
    info = info or load_dataset_info(paths)
    cases = cases_in_images_folder(paths.images_ts, info.file_ending)
    return [case_files(paths.images_ts, None, c, info) for c in cases]


# pytest collects functions named test_* from modules it imports; this one is not a test
test_cases.__test__ = False  # type: ignore[attr-defined]
