"""Saved probabilities (``CASE.npz``) and ensembles of them.

A probabilities file holds, without pickled objects:

* ``probabilities``: float16 ``(num_classes, z, y, x)`` softmax probabilities in the original
  image's array shape (channel ``k`` is label value ``k``);
* ``geometry``: the original image's :class:`~toolkit.io.images.Geometry` as a JSON string,
  so a label map can be written from the file alone, with exactly the input's spacing,
  origin and direction;
* ``regions_class_order`` (models trained on regions only): the label value each channel's
  region writes; the channels are then sigmoid probabilities, one per region.

Files written elsewhere (nnU-Net v2's own ``.npz``) carry no geometry; the label image of the
same case next to them (``CASE.nii.gz``, ``CASE.mha``, ...) then supplies it.

An ensemble averages the probabilities of its members with equal weights (in float32),
then takes the argmax (for regions: each region above 0.5, written in ``regions_class_order``,
:func:`toolkit.core.labels.labels_from_probabilities`). The rule is written once here and used by every ensemble: ``toolkit
ensemble`` (saved files, :func:`ensemble_folders`), ``toolkit predict`` with several
configurations (:func:`toolkit.inference.files.predict_with_ensemble`) and the evaluation of
ensemble candidates (:func:`toolkit.evaluation.predictions.ensemble_argmax`, which sums without
dividing).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.labels import labels_from_probabilities
from toolkit.core.postprocessing import Postprocessing, apply_postprocessing
from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path, sweep_temporaries
from toolkit.io.images import IMAGE_SUFFIXES, Geometry, load_image, write_image
from toolkit.progress import track
from toolkit.workspace import FILE_ENDING, PROBABILITIES_ENDING

PROBABILITIES_KEY = "probabilities"
GEOMETRY_KEY = "geometry"
REGIONS_KEY = "regions_class_order"


@dataclass
class SavedProbabilities:
    probabilities: np.ndarray  # (num_classes, z, y, x)
    geometry: Geometry | None
    regions_class_order: tuple[int, ...] | None = None  # regions: the value each one writes


def save_probabilities(
    path: str | Path,
    probabilities: np.ndarray,
    geometry: Geometry | None,
    regions_class_order: Sequence[int] | None = None,
) -> None:
    """Write ``CASE.npz`` atomically: float16 probabilities and the geometry as JSON."""
    if probabilities.ndim != 4:
        raise ValueError(
            f"probabilities must be (classes, z, y, x), got shape {probabilities.shape}"
        )
    if geometry is not None and tuple(probabilities.shape[1:]) != geometry.shape_zyx:
        raise ValueError(
            f"probabilities of shape {probabilities.shape[1:]} do not fit geometry {geometry.shape_zyx}"
        )
    arrays = {PROBABILITIES_KEY: probabilities.astype(np.float16, copy=False)}
    if geometry is not None:
        arrays[GEOMETRY_KEY] = np.array(json.dumps(geometry.to_dict()))
    if regions_class_order is not None:
        arrays[REGIONS_KEY] = np.asarray(regions_class_order, dtype=np.int64)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_probabilities(
    path: str | Path, dtype: np.dtype = np.dtype(np.float32)
) -> SavedProbabilities:
    """Read a probabilities file; the geometry comes from the file or from the case's label image beside it."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError("probabilities file not found", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if PROBABILITIES_KEY not in npz.files:
                raise ToolkitError(
                    f"has no '{PROBABILITIES_KEY}' array (found: {', '.join(npz.files) or 'none'})",
                    path,
                )
            probabilities = npz[PROBABILITIES_KEY].astype(dtype, copy=False)
            geometry = (
                Geometry.from_dict(json.loads(str(npz[GEOMETRY_KEY])))
                if GEOMETRY_KEY in npz.files
                else None
            )
            regions = tuple(int(v) for v in npz[REGIONS_KEY]) if REGIONS_KEY in npz.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise ToolkitError(f"is not a readable probabilities file ({exc})", path) from None
    if probabilities.ndim != 4:
        raise ToolkitError(
            f"probabilities must be (classes, z, y, x), found shape {probabilities.shape}", path
        )
    if geometry is None:
        geometry = _sidecar_geometry(path)
    if geometry is not None and tuple(probabilities.shape[1:]) != geometry.shape_zyx:
        raise ToolkitError(
            f"probabilities of shape {probabilities.shape[1:]} do not fit the image size {geometry.size}",
            path,
        )
    if regions is not None and len(regions) != probabilities.shape[0]:
        raise ToolkitError(
            f"has {probabilities.shape[0]} region channels but {len(regions)} written values", path
        )
    return SavedProbabilities(probabilities, geometry, regions)


def _sidecar_geometry(path: Path) -> Geometry | None:
    case = (
        path.name[: -len(PROBABILITIES_ENDING)]
        if path.name.endswith(PROBABILITIES_ENDING)
        else path.stem
    )
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(case + suffix)
        if candidate.is_file():
            return load_image(candidate).geometry
    return None


def sum_probabilities(members: Iterable[np.ndarray]) -> np.ndarray:
    """The members' probabilities summed in float32, in their order (the members unchanged).

    ``members`` may be a generator: then only the sum and one member are held at a time.
    """
    total: np.ndarray | None = None
    for member in members:
        if total is None:
            total = np.array(member, dtype=np.float32)  # a copy: the sum is written in place
        elif member.shape != total.shape:
            raise ValueError(f"ensemble members differ in shape: {member.shape} != {total.shape}")
        else:
            total += member
        del member  # released before the next member is made
    if total is None:
        raise ValueError("an ensemble needs at least one member")
    return total


def average_probabilities(members: Iterable[np.ndarray]) -> np.ndarray:
    """Equal-weight mean of the members' probabilities, float32: their sum, divided by their
    number (``members`` may be a generator, as for :func:`sum_probabilities`)."""
    count = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal count
        for member in members:
            count += 1
            yield member

    total = sum_probabilities(counted())
    total /= count
    return total


def probability_files(folder: Path) -> dict[str, Path]:
    """Case -> probabilities file of a folder (hidden files skipped)."""
    if not folder.is_dir():
        raise ToolkitError("folder not found", folder)
    return {
        p.name[: -len(PROBABILITIES_ENDING)]: p
        for p in sorted(folder.iterdir())
        if p.name.endswith(PROBABILITIES_ENDING) and not p.name.startswith(".") and p.is_file()
    }


def ensemble_case(files: Sequence[Path]) -> SavedProbabilities:
    """Average one case's probabilities over the members, keeping at most two arrays in memory."""
    geometries: list[Geometry] = []
    regions: list[tuple[int, ...] | None] = []
    mean = average_probabilities(_checked_probabilities(files, geometries, regions))
    return SavedProbabilities(mean, geometries[0] if geometries else None, regions[0])


def _checked_probabilities(
    files: Sequence[Path],
    geometries: list[Geometry],
    regions: list[tuple[int, ...] | None],
) -> Iterator[np.ndarray]:
    """Each file's probabilities, checked against the first file's shape, regions and the
    first geometry found (which is put in ``geometries``; the regions in ``regions``)."""
    shape = None
    for f in files:
        saved = load_probabilities(f)
        if shape is None:
            shape = saved.probabilities.shape
            regions.append(saved.regions_class_order)
        elif saved.regions_class_order != regions[0]:
            raise ToolkitError(
                f"regions ({saved.regions_class_order or 'none: classes'}) differ from "
                f"{files[0]}'s ({regions[0] or 'none: classes'})",
                f,
            )
        elif saved.probabilities.shape != shape:
            raise ToolkitError(
                f"probabilities of shape {saved.probabilities.shape} differ from {shape} in {files[0]}",
                f,
            )
        if saved.geometry is not None:
            if not geometries:
                geometries.append(saved.geometry)
            elif (problem := geometries[0].matches(saved.geometry)) is not None:
                raise ToolkitError(f"geometry differs from {files[0]}: {problem}", f)
        yield saved.probabilities
        del saved


def ensemble_folders(
    inputs: Sequence[str | Path],
    output: str | Path,
    file_ending: str = FILE_ENDING,
    postprocessing: Postprocessing | None = None,
    save_probabilities_too: bool = False,
    quiet: bool = False,
) -> list[Path]:
    """Average the probabilities of every case in all ``inputs`` folders; write labels to ``output``.

    Every folder must hold the same cases. Returns the label files written.
    """
    folders = [Path(p) for p in inputs]
    if len(folders) < 2:
        raise ToolkitError("an ensemble needs at least two folders of probabilities")
    listings = [probability_files(f) for f in folders]
    cases = sorted(set().union(*listings))
    if not cases:
        raise ToolkitError(
            f"no probabilities files (*{PROBABILITIES_ENDING}) found; predict with --save-probabilities",
            folders[0],
        )
    for folder, listing in zip(folders, listings, strict=True):
        missing = [c for c in cases if c not in listing]
        if missing:
            raise ToolkitError(
                f"has no probabilities for {len(missing)} case(s): {', '.join(missing[:5])}", folder
            )
    output = Path(output)
    # what an ensemble killed mid-write left of these outputs (only theirs: the folder is the user's)
    sweep_temporaries(
        output,
        targets={f"{c}{e}" for c in cases for e in (file_ending, PROBABILITIES_ENDING)},
    )
    written = []
    for case in track(cases, "ensembling", quiet=quiet):
        result = ensemble_case([listing[case] for listing in listings])
        if result.geometry is None:
            raise ToolkitError(
                "no geometry: the file has none and no label image of the case lies beside it",
                listings[0][case],
            )
        labels = labels_from_probabilities(result.probabilities, result.regions_class_order)
        if postprocessing is not None and not postprocessing.is_identity:
            labels = apply_postprocessing(labels, postprocessing)
        target = output / f"{case}{file_ending}"
        write_image(target, labels, result.geometry)
        if save_probabilities_too:
            save_probabilities(
                output / f"{case}{PROBABILITIES_ENDING}",
                result.probabilities,
                result.geometry,
                result.regions_class_order,
            )
        written.append(target)
    return written
