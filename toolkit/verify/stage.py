"""Integrity checks of a converted dataset (``toolkit verify``), run first by every later stage.

The rules are in :mod:`toolkit.verify.checks` (per case, run in worker processes, and for the
folder as a whole), the outcome in :mod:`toolkit.verify.report`. Results of cases without
errors are cached in ``raw/.verified.json`` (:mod:`toolkit.verify.cache`), so verifying
unchanged data again only reads the directory listing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.core.labels import dataset_label_model
from toolkit.errors import ToolkitError
from toolkit.io.dataset_json import CaseFiles, load_dataset_info, test_cases, training_cases
from toolkit.parallel import map_cases
from toolkit.progress import default_workers
from toolkit.verify.cache import VerifyCache, case_key, case_stats, file_stat
from toolkit.verify.checks import CaseCheck, check_case, dimension_problems, folder_problems
from toolkit.verify.report import Problem, Report, count_phrase
from toolkit.workspace import DatasetPaths, RawFolder

__all__ = ["invalid_message", "listed_message", "require_valid", "verify_dataset"]

# below this much data, starting worker processes (about a second each) costs more than it saves
PARALLEL_MIN_BYTES = 32 << 20


def choose_workers(requested: int | None, files: list[Path]) -> int:
    """``requested`` when given; else all cores for much data, one process for little."""
    if requested is not None:
        return max(1, requested)
    total = 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError:
            pass
        if total >= PARALLEL_MIN_BYTES:
            return default_workers(None)
    return 1


def verify_folder(
    folder: RawFolder,
    workers: int | None = None,
    quiet: bool = True,
    use_cache: bool = True,
) -> Report:
    """Check a converted dataset folder; every problem found, none raised."""
    report = Report(folder=folder.root)
    try:
        info = load_dataset_info(folder)
    except ToolkitError as exc:
        report.problems.append(Problem("", exc.path or folder.dataset_json, exc.message))
        return report
    # what the labels mean (regions, the ignore label) is no case's problem: one line, at once
    dataset_label_model(info, folder.dataset_json)
    training = training_cases(folder, info)
    test = test_cases(folder, info)
    report.training_cases, report.test_cases = len(training), len(test)
    report.problems.extend(folder_problems(folder, info, training, test))

    cache = (
        VerifyCache.load(folder) if use_cache else VerifyCache(file_stat(folder.dataset_json), {})
    )
    declared = tuple(info.label_values)
    dims: list[tuple[CaseFiles, int | None]] = []
    to_check: list[tuple[str, CaseFiles, dict[str, list[int] | None]]] = []
    fresh: dict[str, dict[str, Any]] = {}
    for split, cases in (("train", training), ("test", test)):
        for files in cases:
            key = case_key(split, files.case)
            stats = case_stats(files, folder.root)
            entry = cache.lookup(key, stats) if use_cache else None
            if entry is None:
                to_check.append((key, files, stats))
                continue
            fresh[key] = entry
            dims.append((files, entry.get("dimension")))
            report.problems.extend(
                Problem.from_json(p, folder.root) for p in entry.get("problems", [])
            )

    checks = [CaseCheck(f.case, tuple(f.images), f.label, declared) for _, f, _ in to_check]
    n_workers = choose_workers(
        workers, [p for c in checks for p in (*c.images, c.label) if p is not None]
    )
    outcomes = map_cases(
        check_case,
        checks,
        n_workers,
        f"verify {folder.root.parent.name or folder.root.name}",
        quiet,
    )
    report.cases_read = len(checks)
    for (key, files, stats), outcome in zip(to_check, outcomes, strict=True):
        report.problems.extend(outcome.problems)
        dims.append((files, outcome.dimension))
        if not any(p.is_error for p in outcome.problems):
            fresh[key] = {
                "files": stats,
                "dimension": outcome.dimension,
                "problems": [p.to_json(folder.root) for p in outcome.problems],
            }
    report.problems.extend(dimension_problems(dims))
    report.problems.sort(key=lambda p: (p.case, str(p.file), p.message))
    if use_cache and (fresh != cache.cases or not folder.verify_cache.is_file()):
        cache.cases = fresh
        cache.save(folder)
    return report


def verify_dataset(
    paths: DatasetPaths,
    workers: int | None = None,
    quiet: bool = True,
    use_cache: bool = True,
) -> Report:
    """Check the workspace dataset's ``raw/``; says to run convert when there is none."""
    paths.require_raw()
    return verify_folder(paths.raw_folder, workers=workers, quiet=quiet, use_cache=use_cache)


def require_valid(paths: DatasetPaths, workers: int | None = None, quiet: bool = True) -> Report:
    """What every stage after convert calls first: the report, or an error when data is broken."""
    report = verify_dataset(paths, workers=workers, quiet=quiet)
    if not report.ok:
        raise ToolkitError(invalid_message(report, paths.name), paths.raw)
    return report


def listed_message(report: Report) -> str:
    """The closing line of a report whose problems were just printed one per line."""
    cases = report.broken_cases
    scope = f" in {count_phrase(len(cases), 'case')}" if cases else ""
    return f"{count_phrase(len(report.errors), 'error')}{scope}, listed above"


def invalid_message(report: Report, dataset: str) -> str:
    first = report.errors[0]
    where = f"case {first.case}: " if first.case else ""
    cases = report.broken_cases
    scope = f" in {count_phrase(len(cases), 'case')}" if cases else ""
    return (
        f"{count_phrase(len(report.errors), 'error')}{scope} (first: {where}{first.file.name if first.file else ''}: "
        f"{first.message}); run `toolkit verify {dataset}` to list them"
    )
