"""Commands of the evaluation stage: ``evaluate``, ``select``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import (
    QuietOption,
    WaitOption,
    WorkersOption,
    WorkspaceOption,
    dataset_argument,
    parse_int_list,
    parse_str_list,
    writing,
)
from toolkit.core import constants as defaults
from toolkit.progress import info


def evaluate(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    folds: str | None = typer.Option(
        None,
        "--folds",
        "-f",
        help="Folds to evaluate, e.g. 0,1 (a partial cross-validation, reported as such). "
        "Default: every fold of splits.json.",
        show_default=False,
    ),
    configs: str | None = typer.Option(
        None,
        "--configs",
        "-c",
        help="Configurations to compare, e.g. 2d,3d_fullres; each must have every validation "
        "prediction. Default: every trained configuration with complete predictions (others are "
        "listed with the command that completes them).",
        show_default=False,
    ),
    ensembles: bool = typer.Option(
        True, "--ensembles/--no-ensembles", help="Also compare every pairwise ensemble."
    ),
    nsd_tolerance: float = typer.Option(
        defaults.NSD_TOLERANCE_MM,
        "--nsd-tolerance",
        help="Normalized surface distance tolerance in mm.",
    ),
    bootstrap_samples: int = typer.Option(
        defaults.BOOTSTRAP_SAMPLES,
        "--bootstrap-samples",
        help="Virtual validation sets drawn for the bootstrap.",
    ),
    seed: int = typer.Option(
        defaults.BOOTSTRAP_SEED, "--seed", help="Seed of the bootstrap's draws."
    ),
    tie_tolerance: float = typer.Option(
        defaults.TIE_TOLERANCE,
        "--tie-tolerance",
        help="Mean Dice difference within which candidates tie; a tie goes to the simpler one.",
    ),
    workers: int | None = WorkersOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Measure every candidate on the cross-validation and bootstrap the comparison.

    Candidates are the trained configurations and their pairwise ensembles (probabilities
    averaged). Writes `evaluation/cases.csv` (Dice, IoU, TP/FP/FN, HD95, NSD, volumes per case
    and class), `summary.json`, `bootstrap.json` and `report.md` with figures and pictures of
    the chosen candidate's best, median and worst validation case per class.
    """
    from toolkit.evaluation.stage import EvaluationOptions, evaluate_dataset
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    options = EvaluationOptions(
        folds=parse_int_list(folds, "--folds"),
        configurations=parse_str_list(configs),
        ensembles=ensembles,
        nsd_tolerance_mm=nsd_tolerance,
        samples=bootstrap_samples,
        seed=seed,
        tie_tolerance=tie_tolerance,
    )
    from toolkit.evaluation.stage import load_evaluation

    with writing(paths, wait):
        summary = evaluate_dataset(paths, options, workers=workers, quiet=quiet)
        _, bootstrap = load_evaluation(paths)
    for b in sorted(bootstrap.candidates, key=lambda c: -c.mean_dice):
        mark = "*" if b.name == summary.chosen else " "
        info(
            f"{mark} {b.name:<32} mean foreground Dice {b.mean_dice:.4f} "
            f"[{b.interval.low:.4f}, {b.interval.high:.4f}]  chosen in {b.rank_first_frequency:6.1%}"
        )
    info(
        f"best: {summary.chosen} (* above; {bootstrap.samples} virtual validation sets, "
        f"{bootstrap.confidence:.0%} intervals)"
    )
    info(f"report: {paths.evaluation_report}")


def select(
    dataset: str = dataset_argument(),
    workspace: Path | None = WorkspaceOption,
    workers: int | None = WorkersOption,
    wait: bool = WaitOption,
    quiet: bool = QuietOption,
) -> None:
    """Choose the candidate and its postprocessing; writes `selection.json`.

    Takes the candidate with the best cross-validation mean foreground Dice (ties within the
    evaluation's tolerance go to the simpler one), then keeps the largest connected component
    of the foreground and of each class only where that improves the cross-validation Dice.
    Run `toolkit evaluate` first.
    """
    from toolkit.evaluation.stage import select_dataset
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths.open(workspace, dataset)
    with writing(paths, wait):
        selection = select_dataset(paths, workers=workers, quiet=quiet)
    pp = selection.postprocessing
    steps = []
    if pp.largest_component_foreground:
        steps.append("largest component of the foreground")
    if pp.largest_component_classes:
        steps.append(
            "largest component of class " + ",".join(map(str, pp.largest_component_classes))
        )
    info(
        f"selected {selection.candidate} (folds {','.join(map(str, selection.folds))}): mean foreground "
        f"Dice {selection.mean_dice:.4f} [{selection.interval.low:.4f}, {selection.interval.high:.4f}], "
        f"chosen in {selection.rank_first_frequency:.1%} of virtual validation sets"
    )
    info(
        f"postprocessing: {'; '.join(steps) if steps else 'none'} "
        f"(Dice {selection.mean_dice:.4f} -> {selection.mean_dice_postprocessed:.4f})"
    )
    info(f"wrote {paths.selection_json}; report: {paths.evaluation_report}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("select")(select)
