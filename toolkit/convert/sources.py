"""What ``toolkit convert`` reads: an MSD task folder or a dataset already in the converted layout.

* an MSD task folder (``dataset.json`` with ``modality``, ``labels``, ``training``, ``test``;
  multi-modal images as one 4D NIfTI with the channels along the fourth axis);
* a dataset already in the converted layout (nnU-Net v2 raw: ``dataset.json`` with
  ``channel_names``, ``imagesTr/CASE_0000<ending>``, ``labelsTr/CASE<ending>``), or a toolkit
  dataset folder holding one in ``raw/``.

Files whose names start with ``.`` (macOS ``._`` junk) are skipped. Paths listed in
``dataset.json`` may not leave the task folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.io.confine import confined_path, plain_name
from toolkit.io.dataset_json import (
    DatasetInfo,
    parse_channel_names,
    parse_labels,
    parse_regions_class_order,
    test_cases,
    training_cases,
)
from toolkit.io.images import has_image_suffix, strip_image_suffix
from toolkit.io.json_files import read_json
from toolkit.workspace import RawFolder

FORMAT_MSD = "msd"
FORMAT_RAW = "nnunetv2"


@dataclass(frozen=True)
class SourceCase:
    """One case of the source: its image file(s) and label file."""

    case: str
    images: tuple[Path, ...]  # one (maybe 4D) file for MSD; one file per channel for nnU-Net v2
    label: Path | None


@dataclass(frozen=True)
class Source:
    """A task ready to convert: where it is, what its dataset.json says, its cases."""

    root: Path
    format: str  # FORMAT_MSD or FORMAT_RAW
    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    training: list[SourceCase]
    test: list[SourceCase]
    name: str = ""
    description: str = ""
    licence: str = ""
    reference: str = ""
    notes: list[str] = field(default_factory=list)  # things the user should hear about
    regions_class_order: list[int] | None = None  # with regions (nnU-Net v2 raw datasets)


def _read_dataset_json(path: Path) -> dict:
    return read_json(path, what="dataset.json")


def _inside(root: Path, relative: str, what: str, json_path: Path) -> Path:
    """``root/relative`` for a path listed in dataset.json, refusing one that leaves ``root``."""
    # the user's own task folder: its links are theirs (unpacked archives were checked)
    return confined_path(root, relative, what=f"{what} path", source=json_path, follow_links=False)


def _listed_image(entry: object, key: str, root: Path, json_path: Path) -> Path:
    value = entry.get(key) if isinstance(entry, dict) else entry
    if not isinstance(value, str) or not value:
        raise ToolkitError(f"entry {entry!r} has no {key!r} path", json_path)
    return _inside(root, value, key, json_path)


def read_msd_task(root: Path) -> Source:
    """An MSD task folder's dataset.json and the cases it lists (junk ``._`` files skipped)."""
    json_path = root / "dataset.json"
    data = _read_dataset_json(json_path)
    modality = data.get("modality", data.get("channel_names"))
    channel_names = parse_channel_names(modality, json_path)
    labels = parse_labels(data.get("labels"), json_path)
    notes: list[str] = []

    def case_of(path: Path) -> str:
        return strip_image_suffix(path.name)

    training: list[SourceCase] = []
    if isinstance(data.get("training"), list):
        for entry in data["training"]:
            image = _listed_image(entry, "image", root, json_path)
            label = _listed_image(entry, "label", root, json_path)
            if image.name.startswith("."):
                continue
            training.append(SourceCase(case_of(image), (image,), label))
    else:
        for image in _image_files(root / "imagesTr"):
            training.append(SourceCase(case_of(image), (image,), root / "labelsTr" / image.name))
        notes.append("dataset.json lists no 'training' cases; took every image in imagesTr")
    test: list[SourceCase] = []
    if isinstance(data.get("test"), list):
        for entry in data["test"]:
            image = _listed_image(entry, "image", root, json_path)
            if not image.name.startswith("."):
                test.append(SourceCase(case_of(image), (image,), None))
    else:
        test = [SourceCase(case_of(p), (p,), None) for p in _image_files(root / "imagesTs")]

    listed = {c.images[0].name for c in training}
    unlisted = [p.name for p in _image_files(root / "imagesTr") if p.name not in listed]
    if unlisted:
        notes.append(
            f"{len(unlisted)} image(s) in imagesTr not listed in dataset.json were left out, e.g. {unlisted[0]}"
        )
    declared = data.get("numTraining")
    if isinstance(declared, int) and declared != len(training):
        notes.append(
            f"dataset.json says numTraining {declared} but lists {len(training)} training cases"
        )
    _check_unique(training + test, json_path)
    return Source(
        root=root,
        format=FORMAT_MSD,
        channel_names=channel_names,
        labels=labels,
        training=training,
        test=test,
        name=str(data.get("name") or ""),
        description=str(data.get("description") or ""),
        licence=str(data.get("licence") or data.get("license") or ""),
        reference=str(data.get("reference") or ""),
        notes=notes,
        regions_class_order=parse_regions_class_order(data.get("regions_class_order"), json_path),
    )


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and has_image_suffix(p)
    )


def _check_unique(cases: list[SourceCase], json_path: Path) -> None:
    """Each case once, under a plain name: the one rule later stages (and model archives)
    hold case names to, so that what convert accepts the rest accepts too."""
    seen: set[str] = set()
    for c in cases:
        plain_name(c.case, what="case", source=json_path)
        if c.case in seen:
            raise ToolkitError(f"case {c.case!r} is listed twice", json_path)
        seen.add(c.case)


def read_raw_dataset(root: Path) -> Source:
    """A dataset already in the converted (nnU-Net v2 raw) layout."""
    folder = RawFolder(root)
    data = _read_dataset_json(folder.dataset_json)
    info = DatasetInfo.from_json(data, folder.dataset_json)
    training = [SourceCase(c.case, tuple(c.images), c.label) for c in training_cases(folder, info)]
    test = [SourceCase(c.case, tuple(c.images), None) for c in test_cases(folder, info)]
    for case in training + test:
        plain_name(case.case, what="case", source=folder.dataset_json)
    return Source(
        root=root,
        format=FORMAT_RAW,
        channel_names=info.channel_names,
        labels=info.labels,
        training=training,
        test=test,
        regions_class_order=info.regions_class_order,
        name=info.name,
        description=info.description,
        licence=info.licence,
        reference=info.reference,
    )


def open_source(folder: Path) -> Source:
    """Recognise the layout of an (unpacked) task folder."""
    if not (folder / "dataset.json").is_file() and (folder / "raw" / "dataset.json").is_file():
        folder = folder / "raw"  # a toolkit dataset folder
    json_path = folder / "dataset.json"
    if not json_path.is_file():
        raise ToolkitError(
            "no dataset.json: not an MSD task folder nor a converted dataset", folder
        )
    data = _read_dataset_json(json_path)
    if "channel_names" in data and "modality" not in data:
        return read_raw_dataset(folder)
    if "modality" in data:
        return read_msd_task(folder)
    raise ToolkitError(
        "dataset.json has neither 'modality' (MSD) nor 'channel_names' (converted layout)",
        json_path,
    )
