"""The two stages: ``toolkit evaluate`` and ``toolkit select`` (the I/O around the rules).

``evaluate_dataset`` measures every candidate on every validation case (one worker task per
case, each prediction file read once), bootstraps, and writes ``evaluation/cases.csv``,
``summary.json``, ``bootstrap.json`` and the report. ``select_dataset`` takes the candidate
the selection rule picked, chooses its postprocessing on the same cases, and writes
``selection.json`` and the report again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from toolkit.core.labels import LabelModel, dataset_label_model
from toolkit.core.selection import CandidateScore, Selection
from toolkit.errors import ToolkitError
from toolkit.evaluation.bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_SAMPLES,
    DEFAULT_SEED,
    bootstrap_candidates,
    nanmean_last,
)
from toolkit.evaluation.candidates import TIE_TOLERANCE, Candidate
from toolkit.evaluation.crossval import load_cross_validation, resolve_candidates
from toolkit.evaluation.metrics import DEFAULT_NSD_TOLERANCE_MM, case_metrics, label_boxes
from toolkit.evaluation.postprocessing import (
    choose_postprocessing,
    class_means,
    variant_counts,
    variant_dice,
)
from toolkit.evaluation.predictions import CaseLoader, CaseSources, case_sources, metric_view
from toolkit.evaluation.report import write_report
from toolkit.evaluation.tables import (
    CaseRow,
    EvaluationSummary,
    evaluation_digest,
    load_evaluation,
    metric_matrix,
    summarize_candidate,
    write_cases_csv,
)
from toolkit.io.atomic import sweep_temporaries, write_json
from toolkit.io.dataset_json import load_dataset_info
from toolkit.parallel import map_cases
from toolkit.progress import default_workers, info
from toolkit.workspace import DatasetPaths

__all__ = ["EvaluationOptions", "evaluate_dataset", "load_evaluation", "select_dataset"]


@dataclass(frozen=True)
class EvaluationOptions:
    folds: list[int] | None = None  # None: every fold of the split
    configurations: list[str] | None = None  # None: every trained configuration
    ensembles: bool = True
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM
    samples: int = DEFAULT_SAMPLES
    seed: int = DEFAULT_SEED
    confidence: float = DEFAULT_CONFIDENCE
    tie_tolerance: float = TIE_TOLERANCE
    time_budget: tuple[str, ...] = ()  # run-all --time-budget: what it bought, for the report

    def check(self) -> None:
        if not self.nsd_tolerance_mm > 0:
            raise ToolkitError(
                f"--nsd-tolerance must be a positive distance in mm, not {self.nsd_tolerance_mm}"
            )
        if self.samples < 1:
            raise ToolkitError(f"--bootstrap-samples must be at least 1, not {self.samples}")
        if not 0 < self.confidence < 1:
            raise ToolkitError(f"--confidence must lie between 0 and 1, not {self.confidence}")
        if self.tie_tolerance < 0:
            raise ToolkitError(f"--tie-tolerance must not be negative, not {self.tie_tolerance}")
        if self.configurations is not None and not self.configurations:
            raise ToolkitError("--configs must name at least one configuration")


@dataclass(frozen=True)
class _CaseJob:
    sources: CaseSources
    candidates: tuple[Candidate, ...]
    labels: LabelModel
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM


def _evaluate_case(job: _CaseJob) -> list[CaseRow]:
    loader = CaseLoader(job.sources, job.labels)
    reference, spacing = metric_view(loader.reference, loader.geometry)
    reference_boxes = label_boxes(reference)
    names = job.labels.names
    rows = []
    for candidate in job.candidates:
        prediction, _ = metric_view(loader.segmentation(candidate), loader.geometry)
        for m in case_metrics(
            reference,
            prediction,
            job.labels.regions,
            spacing,
            job.nsd_tolerance_mm,
            reference_boxes,
            ignore=job.labels.ignore,
        ):
            rows.append(
                CaseRow.of(candidate.name, job.sources.case, job.sources.fold, names[m.label], m)
            )
    return rows


def evaluate_dataset(
    paths: DatasetPaths,
    options: EvaluationOptions | None = None,
    workers: int | None = None,
    quiet: bool = False,
) -> EvaluationSummary:
    """Measure, bootstrap, write ``evaluation/`` and the report; returns the summary."""
    options = options or EvaluationOptions()
    options.check()
    sweep_temporaries(paths.evaluation, recursive=True)  # of an evaluation killed mid-write
    dataset = load_dataset_info(paths)
    cv = load_cross_validation(paths, dataset, options.folds)
    candidate_set = resolve_candidates(paths, cv, options.configurations, options.ensembles)
    for name, note in candidate_set.notes.items():
        info(f"[yellow]{name}[/]: {note}")
    candidates = candidate_set.candidates
    if not quiet:
        info(
            f"evaluating {len(candidates)} candidate(s) on {cv.describe()}: {', '.join(c.name for c in candidates)}"
        )
    labels = dataset_label_model(dataset, paths.dataset_json)
    names = labels.names  # foreground classes or regions, by key
    foreground = list(names)
    jobs = [
        _CaseJob(
            case_sources(paths, vc, candidate_set.configurations),
            tuple(candidates),
            labels,
            options.nsd_tolerance_mm,
        )
        for vc in cv.cases
    ]
    results = map_cases(_evaluate_case, jobs, default_workers(workers), "evaluate", quiet)
    rows = [row for case_rows in results for row in case_rows]
    order = {c.name: i for i, c in enumerate(candidates)}
    rows.sort(key=lambda r: (order[r.candidate], r.case, r.label))

    cases = [vc.case for vc in cv.cases]
    fold_of = {vc.case: vc.fold for vc in cv.cases}
    candidate_names = [c.name for c in candidates]
    summaries = [
        summarize_candidate(c.name, list(c.configurations), rows, cases, fold_of, foreground)
        for c in candidates
    ]
    dice = metric_matrix(rows, candidate_names, cases, foreground, "dice")
    bootstrap, _ = bootstrap_candidates(
        candidate_names,
        dice,
        foreground,
        options.samples,
        options.seed,
        options.confidence,
        options.tie_tolerance,
    )
    summary = EvaluationSummary(
        dataset=paths.name,
        folds=cv.folds,
        num_folds=cv.num_folds,
        num_cases=len(cases),
        total_cases=cv.total_cases,
        cases=cases,
        labels=dict(names),
        nsd_tolerance_mm=options.nsd_tolerance_mm,
        tie_tolerance=options.tie_tolerance,
        chosen=bootstrap.chosen,
        candidates=summaries,
        notes=dict(candidate_set.notes),
        time_budget=list(options.time_budget),
    )
    # summary.json goes last: its presence means the files beside it belong to it
    paths.evaluation_summary_json.unlink(missing_ok=True)
    write_cases_csv(paths.evaluation_cases_csv, rows)
    write_json(paths.bootstrap_json, bootstrap.to_dict())
    summary.save(paths.evaluation_summary_json)
    write_report(paths)
    return summary


# selection


def _check_unchanged_since_evaluation(paths: DatasetPaths, summary: EvaluationSummary) -> None:
    evaluated_at = paths.evaluation_summary_json.stat().st_mtime_ns
    configurations = sorted({c for cand in summary.candidates for c in cand.configurations})
    for config in configurations:
        for fold in summary.folds:
            folder = paths.validation_dir(config, fold)
            if folder.is_dir() and folder.stat().st_mtime_ns > evaluated_at:
                raise ToolkitError(
                    f"validation predictions changed after the evaluation: run `toolkit evaluate {paths.name}` again",
                    folder,
                )


@dataclass(frozen=True)
class _PostprocessingJob:
    sources: CaseSources
    candidate: Candidate
    labels: LabelModel


def _postprocessing_case(job: _PostprocessingJob) -> np.ndarray:
    loader = CaseLoader(job.sources, job.labels)
    segmentation = loader.segmentation(job.candidate)
    return variant_counts(loader.reference, segmentation, job.labels.regions, job.labels)


def select_dataset(
    paths: DatasetPaths, workers: int | None = None, quiet: bool = False
) -> Selection:
    """Postprocessing for the evaluation's chosen candidate; writes ``selection.json``."""
    sweep_temporaries(paths.evaluation, recursive=True)  # of a selection killed mid-write
    sweep_temporaries(paths.root, targets={paths.selection_json.name})
    summary, bootstrap = load_evaluation(paths)
    _check_unchanged_since_evaluation(paths, summary)
    dataset = load_dataset_info(paths)
    cv = load_cross_validation(paths, dataset, summary.folds)
    if [vc.case for vc in cv.cases] != summary.cases:
        raise ToolkitError(
            f"the validation cases differ from those evaluated: run `toolkit evaluate {paths.name}` again",
            paths.splits_json,
        )
    labels = dataset_label_model(dataset, paths.dataset_json)
    foreground = list(summary.labels)
    if summary.labels != labels.names:
        raise ToolkitError(
            f"labels changed since the evaluation: run `toolkit evaluate {paths.name}` again",
            paths.dataset_json,
        )
    candidate = Candidate.parse(summary.chosen)
    if not quiet:
        info(f"choosing postprocessing for {candidate.name} on {len(cv.cases)} cases")
    jobs = [
        _PostprocessingJob(
            case_sources(paths, vc, list(candidate.configurations)),
            candidate,
            labels,
        )
        for vc in cv.cases
    ]
    counts = np.stack(
        map_cases(_postprocessing_case, jobs, default_workers(workers), "postprocessing", quiet)
    )
    choice = choose_postprocessing(variant_dice(counts), foreground, summary.labels, labels)
    chosen_summary = summary.candidate(candidate.name)
    before = choice.steps[0].mean_dice_before
    if abs(before - chosen_summary.mean_dice) > 1e-9:
        raise ToolkitError(
            f"predictions of {candidate.name} give mean Dice {before:.6f}, the evaluation measured "
            f"{chosen_summary.mean_dice:.6f}: run `toolkit evaluate {paths.name}` again",
            paths.evaluation_summary_json,
        )
    after_means = class_means(choice.dice)
    chosen_boot = bootstrap.candidate(candidate.name)
    selection = Selection(
        dataset=paths.name,
        candidate=candidate.name,
        configurations=list(candidate.configurations),
        folds=list(summary.folds),
        postprocessing=choice.postprocessing,
        mean_dice=before,
        mean_dice_postprocessed=float(nanmean_last(after_means)),
        class_dice=choice.steps[0].class_dice_before,
        class_dice_postprocessed={
            label: float(after_means[k]) for k, label in enumerate(foreground)
        },
        interval=chosen_boot.interval,
        rank_first_frequency=chosen_boot.rank_first_frequency,
        labels=dict(summary.labels),
        num_cases=summary.num_cases,
        complete_cross_validation=summary.complete,
        bootstrap_samples=bootstrap.samples,
        confidence=bootstrap.confidence,
        tie_tolerance=summary.tie_tolerance,
        postprocessing_steps=choice.steps,
        candidates=[
            CandidateScore(
                name=b.name,
                configurations=summary.candidate(b.name).configurations,
                mean_dice=b.mean_dice,
                interval=b.interval,
                rank_first_frequency=b.rank_first_frequency,
                difference_to_chosen=b.difference_to_chosen,
                difference_interval=b.difference_interval,
                chosen_better_fraction=b.chosen_better_fraction,
            )
            for b in bootstrap.candidates
        ],
        evaluation_digest=evaluation_digest(paths),
    )
    selection.save(paths.selection_json)
    # the same choice on its own, for `predict --postprocess` and `ensemble --postprocess`
    selection.postprocessing.save(paths.postprocessing_json)
    write_report(paths)
    return selection
