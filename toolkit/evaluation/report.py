"""``evaluation/report.md``: the evaluation and the selection for a person, with figures and
pictures of the chosen candidate's segmentations (:mod:`toolkit.evaluation.pictures`).

Built from the files alone (``cases.csv``, ``summary.json``, ``bootstrap.json`` and, when it
belongs to this evaluation, ``selection.json``), so ``toolkit evaluate`` and ``toolkit
select`` both just call :func:`write_report`. The bootstrap's distributions are drawn again
from ``cases.csv`` with the recorded seed (the same draws, bit for bit).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from toolkit import __version__
from toolkit.core.selection import Selection
from toolkit.evaluation import plots
from toolkit.evaluation.bootstrap import BootstrapResult, bootstrap_candidates
from toolkit.evaluation.budget import budget_lines
from toolkit.evaluation.candidates import CONFIGURATION_COST_ORDER
from toolkit.evaluation.metrics import HD_PERCENTILE
from toolkit.evaluation.pictures import write_pictures
from toolkit.evaluation.tables import (
    EvaluationSummary,
    evaluation_digest,
    load_evaluation,
    metric_matrix,
    read_cases_csv,
)
from toolkit.io.atomic import write_text
from toolkit.workspace import DatasetPaths

FIGURE_BOXPLOTS = "dice_boxplots"
FIGURE_BOOTSTRAP = "bootstrap"
FIGURE_RANKS = "rank_frequency"
FIGURE_DIFFERENCES = "differences"
WORST_CASES = 5


def _f(value: float, digits: int = 4) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _interval(low: float, high: float, digits: int = 4) -> str:
    return f"[{_f(low, digits)}, {_f(high, digits)}]"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def current_selection(paths: DatasetPaths) -> tuple[Selection | None, str]:
    """The selection if it was made from the present evaluation, and a line saying why not."""
    if not paths.selection_json.is_file():
        return None, f"Not selected yet: run `toolkit select {paths.name}`."
    selection = Selection.load(paths.selection_json)
    if selection.evaluation_digest != evaluation_digest(paths):
        return None, (
            f"`selection.json` was made from an earlier evaluation: run `toolkit select {paths.name}` again."
        )
    return selection, ""


def write_report(paths: DatasetPaths) -> Path:
    """Write ``report.md`` and its PNG figures into ``evaluation/``; returns the report's path."""
    summary, bootstrap = load_evaluation(paths)
    rows = read_cases_csv(paths.evaluation_cases_csv)
    selection, selection_note = current_selection(paths)
    names = summary.candidate_names
    labels = list(summary.labels)
    dice = metric_matrix(rows, names, summary.cases, labels, "dice")
    _, draws = bootstrap_candidates(
        names,
        dice,
        labels,
        bootstrap.samples,
        bootstrap.seed,
        bootstrap.confidence,
        bootstrap.tie_tolerance,
    )
    points = [bootstrap.candidate(n).mean_dice for n in names]
    by_score = sorted(
        range(len(names)), key=lambda i: (-np.nan_to_num(points[i], nan=-1.0), i)
    )  # best first
    ordered = [names[i] for i in by_score]
    chosen = summary.chosen

    plots.dice_boxplots(
        paths.evaluation_figure(FIGURE_BOXPLOTS), ordered, dice[by_score], summary.labels, chosen
    )
    plots.bootstrap_distributions(
        paths.evaluation_figure(FIGURE_BOOTSTRAP),
        ordered,
        draws.mean_dice[:, by_score],
        [bootstrap.candidate(n).mean_dice for n in ordered],
        [
            (bootstrap.candidate(n).interval.low, bootstrap.candidate(n).interval.high)
            for n in ordered
        ],
        chosen,
        bootstrap.confidence,
    )
    plots.rank_frequencies(
        paths.evaluation_figure(FIGURE_RANKS),
        ordered,
        [bootstrap.candidate(n).rank_first_frequency for n in ordered],
        chosen,
    )
    others = [i for i in by_score if names[i] != chosen]
    if others:
        plots.paired_differences(
            paths.evaluation_figure(FIGURE_DIFFERENCES),
            chosen,
            [names[i] for i in others],
            draws.differences()[:, others],
            [
                (
                    bootstrap.candidate(names[i]).difference_interval.low,
                    bootstrap.candidate(names[i]).difference_interval.high,
                )
                for i in others
            ],
        )
    else:
        paths.evaluation_figure(FIGURE_DIFFERENCES).unlink(missing_ok=True)

    pictures = write_pictures(paths, summary, rows, dice)
    lines = render_markdown(
        paths,
        summary,
        bootstrap,
        ordered,
        dice,
        selection,
        selection_note,
        has_differences=bool(others),
        pictures=pictures,
    )
    write_text(paths.evaluation_report, "\n".join(lines) + "\n")
    return paths.evaluation_report


def render_markdown(
    paths: DatasetPaths,
    summary: EvaluationSummary,
    bootstrap: BootstrapResult,
    ordered: list[str],
    dice: np.ndarray,
    selection: Selection | None,
    selection_note: str,
    has_differences: bool,
    pictures: list[str],
) -> list[str]:
    names = summary.candidate_names
    label_text = ", ".join(f"{k} ({v})" for k, v in summary.labels.items())
    singles = sum(1 for c in summary.candidates if len(c.configurations) == 1)
    scope = (
        f"all {summary.num_folds} folds, {summary.num_cases} validation cases"
        if summary.complete
        else f"**partial cross-validation**: folds {', '.join(map(str, summary.folds))} of {summary.num_folds}, "
        f"{summary.num_cases} of {summary.total_cases} validation cases"
    )
    conf = f"{bootstrap.confidence:.0%}"
    lines = [
        f"# Evaluation of {summary.dataset}",
        "",
        f"- Cross-validation: {scope}.",
        f"- Candidates: {len(names)} ({singles} configuration(s), {len(names) - singles} pairwise ensemble(s)).",
        *budget_lines(
            paths,
            [c.configurations[0] for c in summary.candidates if len(c.configurations) == 1],
            list(summary.folds),
        ),
        f"- Foreground classes: {label_text}.",
        f"- Bootstrap: {bootstrap.samples} virtual validation sets of {bootstrap.num_cases} cases drawn with "
        f"replacement (seed {bootstrap.seed}), the same draws for every candidate; {conf} percentile intervals.",
        f"- Written by toolkit {__version__}; the numbers are in `cases.csv`, `summary.json`, `bootstrap.json`"
        + (", `../selection.json`." if selection else "."),
        "",
    ]
    if summary.time_budget:  # run-all --time-budget: the budget, what it bought, what more adds
        lines += ["## Time budget", "", *summary.time_budget, ""]
    lines += ["## Selection", ""]
    lines += _selection_section(summary, bootstrap, selection, selection_note)
    lines += ["", "## Candidates", ""]
    lines += [
        f"Mean foreground Dice: per class the mean over the cases where Dice is defined, then the mean over "
        f"classes. *Chosen in* is the fraction of virtual validation sets in which the selection rule picks the "
        f"candidate; *difference* is {summary.chosen} minus the candidate, paired over the same virtual sets.",
        "",
    ]
    header = [
        "",
        "candidate",
        "mean Dice",
        f"{conf} interval",
        "chosen in",
        "difference",
        f"{conf} interval",
        f"{summary.chosen} better in",
    ]
    table = []
    for rank, name in enumerate(ordered, start=1):
        b = bootstrap.candidate(name)
        is_chosen = name == summary.chosen
        table.append(
            [
                str(rank),
                f"**{name}** (chosen)" if is_chosen else name,
                _f(b.mean_dice),
                _interval(b.interval.low, b.interval.high),
                _pct(b.rank_first_frequency),
                "–" if is_chosen else _f(b.difference_to_chosen),
                "–"
                if is_chosen
                else _interval(b.difference_interval.low, b.difference_interval.high),
                "–" if is_chosen else _pct(b.chosen_better_fraction),
            ]
        )
    lines += _table(header, table, "rlrrrrrr")
    lines += [
        "",
        f"![Bootstrap distributions of the mean foreground Dice]({FIGURE_BOOTSTRAP}.png)",
        "",
        f"![How often each candidate is chosen]({FIGURE_RANKS}.png)",
        "",
    ]
    if has_differences:
        lines += [f"![Paired differences to the chosen candidate]({FIGURE_DIFFERENCES}.png)", ""]

    lines += ["## Per class", ""]
    lines += [
        f"Means over the cases where a metric is defined; HD95 and NSD in mm with NSD tolerance "
        f"{summary.nsd_tolerance_mm:g} mm; *cases* = cases where the reference or the prediction holds the class.",
        "",
    ]
    for label, label_name in summary.labels.items():
        lines += [f"### Class {label}: {label_name}", ""]
        rows = []
        for name in ordered:
            c = summary.candidate(name).classes[label]
            interval = bootstrap.candidate(name).class_intervals[label]
            rows.append(
                [
                    name,
                    _f(c.dice),
                    _interval(interval.low, interval.high),
                    _f(c.dice_median),
                    _f(c.iou),
                    _f(c.hd95_mm, 2),
                    _f(c.nsd),
                    f"{c.defined_cases}/{summary.num_cases}",
                ]
            )
        lines += _table(
            [
                "candidate",
                "Dice",
                f"{conf} interval",
                "median Dice",
                "IoU",
                "HD95 mm",
                "NSD",
                "cases",
            ],
            rows,
        )
        lines += [""]
    lines += [f"![Dice per case and class]({FIGURE_BOXPLOTS}.png)", ""]

    lines += ["## Per fold", "", "Mean foreground Dice of the validation cases of each fold.", ""]
    fold_rows = [
        [name]
        + [_f(summary.candidate(name).fold_mean_dice.get(f, math.nan)) for f in summary.folds]
        for name in ordered
    ]
    lines += _table(["candidate"] + [f"fold {f}" for f in summary.folds], fold_rows)
    lines += [""]

    lines += _worst_cases(summary, dice)
    lines += pictures

    if summary.notes:
        lines += ["## Configurations not fully used", ""]
        lines += [f"- `{name}`: {note}" for name, note in summary.notes.items()]
        lines += [""]

    lines += [
        "## Definitions",
        "",
        "- Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), on voxels of one class.",
        "- Reference and prediction both empty: Dice, IoU, HD95 and NSD are undefined (an empty cell in "
        "`cases.csv`, `null` in JSON) and left out of every mean, neither 0 nor 1.",
        "- Exactly one of them empty: Dice = IoU = NSD = 0 and HD95 = the image diagonal in mm.",
        f"- HD95: symmetric {HD_PERCENTILE:.0%} percentile of the distances between the two surfaces (voxels "
        "removed by a face-connected erosion), with the voxel spacing, as grand-challenge-metrics computes it.",
        f"- NSD: fraction of both surfaces within {summary.nsd_tolerance_mm:g} mm of the other surface.",
        f"- Selection: the best mean foreground Dice; candidates within {summary.tie_tolerance:g} of the best are "
        "tied and the simplest of them wins: single configurations before ensembles, and "
        + " < ".join(CONFIGURATION_COST_ORDER)
        + " by cost.",
        "- Postprocessing: the largest connected component of the whole foreground, then of each class; a step is "
        "kept only if the cross-validation mean foreground Dice improves and no class gets worse.",
        "",
    ]
    return lines


def _selection_section(
    summary: EvaluationSummary, bootstrap: BootstrapResult, selection: Selection | None, note: str
) -> list[str]:
    chosen = bootstrap.candidate(summary.chosen)
    conf = f"{bootstrap.confidence:.0%}"
    lines = [
        f"**{summary.chosen}** has the best mean foreground Dice, {_f(chosen.mean_dice)} "
        f"({conf} interval {_interval(chosen.interval.low, chosen.interval.high)}), and is chosen in "
        f"{_pct(chosen.rank_first_frequency)} of the {bootstrap.samples} virtual validation sets.",
        "",
    ]
    if selection is None:
        return lines + [note]
    pp = selection.postprocessing
    kept = []
    if pp.largest_component_foreground:
        kept.append("largest component of the foreground")
    if pp.largest_component_classes:
        kept.append(
            "largest component of class(es) " + ", ".join(map(str, pp.largest_component_classes))
        )
    lines += [
        f"- Use: configuration(s) {', '.join(f'`{c}`' for c in selection.configurations)}, folds "
        f"{', '.join(map(str, selection.folds))}.",
        f"- Postprocessing: {'; '.join(kept) if kept else 'none (no step improved the cross-validation Dice)'}.",
        f"- Mean foreground Dice {_f(selection.mean_dice)} before, {_f(selection.mean_dice_postprocessed)} after "
        "postprocessing.",
        "",
    ]
    labels = list(summary.labels)
    header = ["postprocessing step", "kept", "mean Dice before", "after"] + [
        f"class {k} before → after" for k in labels
    ]
    rows = []
    for step in selection.postprocessing_steps:
        rows.append(
            [
                step.description,
                "yes" if step.accepted else "no",
                _f(step.mean_dice_before),
                _f(step.mean_dice_after),
            ]
            + [
                f"{_f(step.class_dice_before.get(k, math.nan))} → {_f(step.class_dice_after.get(k, math.nan))}"
                for k in labels
            ]
        )
    lines += _table(header, rows, "ll" + "r" * (len(header) - 2))
    return lines


def _worst_cases(summary: EvaluationSummary, dice: np.ndarray) -> list[str]:
    index = summary.candidate_names.index(summary.chosen)
    chosen_dice = dice[index]
    with np.errstate(invalid="ignore"):
        defined = ~np.isnan(chosen_dice)
        counts = defined.sum(axis=1)
        case_mean = np.where(
            counts > 0,
            np.where(defined, chosen_dice, 0).sum(axis=1) / np.maximum(counts, 1),
            np.nan,
        )
    order = [
        i
        for i in np.argsort(np.nan_to_num(case_mean, nan=2.0), kind="stable")
        if not np.isnan(case_mean[i])
    ]
    order = order[:WORST_CASES]
    if not order:
        return []
    lines = [
        f"## Lowest cases of {summary.chosen}",
        "",
        "Mean Dice over the classes defined in the case.",
        "",
    ]
    rows = []
    labels = list(summary.labels)
    for i in order:
        rows.append(
            [summary.cases[i], _f(case_mean[i])]
            + [_f(chosen_dice[i, k]) for k in range(len(labels))]
        )
    lines += _table(["case", "mean Dice"] + [f"class {k}" for k in labels], rows)
    return lines + [""]
