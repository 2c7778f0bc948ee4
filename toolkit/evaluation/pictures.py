"""The report's pictures of the segmentations: what the chosen candidate's predictions look like.

The candidate is the evaluation's ``chosen`` one: the selection rule's pick (best mean
foreground Dice, ties to the simplest), known as soon as ``toolkit evaluate`` has run and the
one ``toolkit select`` then keeps, adding only postprocessing. Per foreground class, the best,
the median and the worst validation case by that class's Dice (:func:`cases_to_show`; cases
where the class's Dice is undefined are left out) get one picture each
(:func:`toolkit.inference.preview.write_overlay`, the slice chosen for that class): the
image's first channel from ``raw/imagesTr``, the reference from ``raw/labelsTr`` and the
validation prediction as evaluated, before postprocessing, so the picture shows what the Dice
in its caption measured. An ensemble's prediction is the argmax of its members' saved
probabilities, as in the evaluation.

A case whose files are missing or unreadable gets a note in the report instead of a picture.
Pictures are ``evaluation/segmentation_class<label>_<role>.png``; those of an earlier report
that this one does not draw are removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolkit.core.labels import dataset_label_model
from toolkit.errors import ToolkitError
from toolkit.evaluation.candidates import Candidate
from toolkit.evaluation.crossval import ValidationCase
from toolkit.evaluation.predictions import CaseLoader, case_sources
from toolkit.evaluation.tables import CaseRow, EvaluationSummary
from toolkit.inference.preview import write_overlay
from toolkit.io.dataset_json import DatasetInfo, case_files, load_dataset_info
from toolkit.io.images import read_image
from toolkit.workspace import DatasetPaths

ROLES = ("best", "median", "worst")
PICTURE_PREFIX = "segmentation"


@dataclass(frozen=True)
class ShownCase:
    """One picture: a case shown for a class, in one role or several (few cases)."""

    label: int
    roles: tuple[str, ...]
    case: str
    dice: float

    @property
    def figure_name(self) -> str:
        return f"{PICTURE_PREFIX}_class{self.label}_{self.roles[0]}"


def cases_to_show(cases: list[str], dice: np.ndarray, labels: list[int]) -> list[ShownCase]:
    """Per class (``dice``: cases x classes, NaN where undefined) its best, median and worst case.

    The cases where the class's Dice is defined are ordered by Dice, ties by their order in
    ``cases``: the worst is the first, the best the last, the median the middle one (the lower
    of the two middle ones for an even number). A case in several roles is shown once, with
    all of them.
    """
    shown = []
    for k, label in enumerate(labels):
        values = dice[:, k]
        ascending = sorted(
            (i for i in range(len(cases)) if not math.isnan(values[i])),
            key=lambda i: (values[i], i),
        )
        if not ascending:
            continue
        picks = {
            "best": ascending[-1],
            "median": ascending[(len(ascending) - 1) // 2],
            "worst": ascending[0],
        }
        for i in dict.fromkeys(picks[role] for role in ROLES):
            roles = tuple(role for role in ROLES if picks[role] == i)
            shown.append(ShownCase(label, roles, cases[i], float(values[i])))
    return shown


def _load_case(
    paths: DatasetPaths, info: DatasetInfo, candidate: Candidate, case: str, fold: int
) -> tuple[np.ndarray, CaseLoader, np.ndarray]:
    """The first channel, the loaded reference and the candidate's prediction of one case."""
    files = case_files(paths.images_tr, paths.labels_tr, case, info)
    assert files.label is not None
    loader = CaseLoader(
        case_sources(
            paths, ValidationCase(case, fold, files.label), list(candidate.configurations)
        ),
        dataset_label_model(info, paths.dataset_json),
    )
    image, geometry = read_image(files.images[0])
    if image.shape != loader.reference.shape:
        raise ToolkitError(
            f"has shape {geometry.shape_zyx}, its reference {loader.reference.shape}",
            files.images[0],
        )
    return image, loader, loader.segmentation(candidate)


def write_pictures(
    paths: DatasetPaths, summary: EvaluationSummary, rows: list[CaseRow], dice: np.ndarray
) -> list[str]:
    """Draw the chosen candidate's pictures (``dice``: candidates x cases x classes, as in
    :func:`~toolkit.evaluation.tables.metric_matrix`); returns the report's section."""
    labels = list(summary.labels)
    chosen = dice[summary.candidate_names.index(summary.chosen)]
    shown = cases_to_show(summary.cases, chosen, labels)
    fold_of = {r.case: r.fold for r in rows}
    drawn: dict[ShownCase, str] = {}  # the slice shown
    problems: dict[ShownCase, str] = {}
    info = load_dataset_info(paths)
    model = dataset_label_model(info, paths.dataset_json)
    # what a label map holds: the classes, or for regions the values they write
    drawn_value = dict(zip(model.names, model.regions_class_order or model.names, strict=True))
    candidate = Candidate.parse(summary.chosen)
    for case in dict.fromkeys(s.case for s in shown):
        of_case = [s for s in shown if s.case == case]
        try:
            image, loader, prediction = _load_case(paths, info, candidate, case, fold_of[case])
        except ToolkitError as exc:
            problems.update({s: str(exc) for s in of_case})
            continue
        for s in of_case:
            view = write_overlay(
                paths.evaluation_figure(s.figure_name),
                image,
                prediction,
                spacing_zyx=loader.geometry.spacing_zyx,
                class_names=model.value_names,
                reference=loader.reference,
                label=drawn_value.get(s.label, s.label),
                title=f"{case}: class {s.label} ({summary.labels[s.label]}), "
                f"{', '.join(s.roles)}, Dice {s.dice:.4f}",
            )
            drawn[s] = view.describe()
        del image, loader, prediction
    _remove_stale(paths, {s.figure_name for s in drawn})
    return picture_section(summary, f"0, {info.channels[0]}", shown, drawn, problems)


def _remove_stale(paths: DatasetPaths, kept: set[str]) -> None:
    if not paths.evaluation.is_dir():
        return
    for old in paths.evaluation.glob(f"{PICTURE_PREFIX}_class*.png"):
        if old.stem not in kept:
            old.unlink(missing_ok=True)


def picture_section(
    summary: EvaluationSummary,
    channel: str,
    shown: list[ShownCase],
    drawn: dict[ShownCase, str],
    problems: dict[ShownCase, str],
) -> list[str]:
    """The report's section: per class, each picture with its caption, or why it is missing."""
    lines = [
        "## What the segmentations look like",
        "",
        f"Validation predictions of **{summary.chosen}**, the candidate the selection rule picks "
        "from this evaluation (the one `toolkit select` keeps), as evaluated: before "
        "postprocessing. Per class, its best, median and worst validation case by that class's "
        "Dice (cases without the class in reference and prediction have no Dice and are left "
        "out). Each picture is one slice, the one holding most of the class in the reference: "
        f"the image (channel {channel}), the reference and the prediction, each class in its "
        "colour as the legend names it.",
        "",
    ]
    for label, name in summary.labels.items():
        lines += [f"### Class {label}: {name}", ""]
        of_class = [s for s in shown if s.label == label]
        if not of_class:
            lines += ["No case holds this class in its reference or its prediction.", ""]
        for s in of_class:
            caption = f"{' = '.join(s.roles)}: {s.case}, Dice {s.dice:.4f}"
            if s in drawn:
                lines += [
                    f"**{caption}** ({drawn[s]})",
                    "",
                    f"![class {label} ({name}), {', '.join(s.roles)}: {s.case}]({s.figure_name}.png)",
                    "",
                ]
            else:
                lines += [
                    f"**{caption}**: no picture, {problems.get(s, 'not drawn')}",
                    "",
                ]
    return lines
