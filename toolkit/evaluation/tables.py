"""The evaluation's files: per-case metrics (``cases.csv``) and their summary (``summary.json``).

``cases.csv`` has one row per (candidate, case, foreground class), columns
:data:`CSV_COLUMNS`; an undefined value (see :mod:`toolkit.evaluation.metrics`) is an empty
cell. Floats are written with full precision, so the file reproduces every figure exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from toolkit.errors import MissingStageError, ToolkitError
from toolkit.evaluation.bootstrap import BootstrapResult, mean_foreground_dice
from toolkit.evaluation.metrics import ClassMetrics
from toolkit.io.atomic import write_json, write_text
from toolkit.io.json_files import float_or_nan, read_json
from toolkit.workspace import DatasetPaths


@dataclass(frozen=True)
class CaseRow:
    """One line of ``cases.csv``."""

    candidate: str
    case: str
    fold: int
    label: int
    label_name: str
    dice: float
    iou: float
    tp: int
    fp: int
    fn: int
    hd95_mm: float
    nsd: float
    ref_volume_mm3: float
    pred_volume_mm3: float

    @classmethod
    def of(cls, candidate: str, case: str, fold: int, label_name: str, m: ClassMetrics) -> CaseRow:
        return cls(
            candidate,
            case,
            fold,
            m.label,
            label_name,
            m.dice,
            m.iou,
            m.tp,
            m.fp,
            m.fn,
            m.hd95_mm,
            m.nsd,
            m.ref_volume_mm3,
            m.pred_volume_mm3,
        )


CSV_COLUMNS = [f.name for f in fields(CaseRow)]
_INT_COLUMNS = {"fold", "label", "tp", "fp", "fn"}
_TEXT_COLUMNS = {"candidate", "case", "label_name"}


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def cases_csv_text(rows: list[CaseRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, c)) for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_cases_csv(path: Path, rows: list[CaseRow]) -> None:
    write_text(path, cases_csv_text(rows))


def read_cases_csv(path: Path) -> list[CaseRow]:
    if not path.is_file():
        raise MissingStageError(path, f"toolkit evaluate {path.parent.parent.name}")
    rows = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != CSV_COLUMNS:
            raise ToolkitError(
                f"columns {reader.fieldnames} are not {CSV_COLUMNS}: run `toolkit evaluate` again",
                path,
            )
        for line, record in enumerate(reader, start=2):
            try:
                values = {
                    c: (
                        record[c]
                        if c in _TEXT_COLUMNS
                        else int(record[c])
                        if c in _INT_COLUMNS
                        else (math.nan if record[c] == "" else float(record[c]))
                    )
                    for c in CSV_COLUMNS
                }
            except (TypeError, ValueError):
                raise ToolkitError(f"line {line} has a value that is not a number", path) from None
            rows.append(CaseRow(**values))
    return rows


def metric_matrix(
    rows: list[CaseRow],
    candidates: list[str],
    cases: list[str],
    labels: list[int],
    metric: str = "dice",
) -> np.ndarray:
    """(candidates, cases, classes) of one metric; NaN where undefined. Every cell must be present."""
    c_index = {c: i for i, c in enumerate(candidates)}
    n_index = {c: i for i, c in enumerate(cases)}
    k_index = {k: i for i, k in enumerate(labels)}
    out = np.full((len(candidates), len(cases), len(labels)), np.nan)
    filled = np.zeros(out.shape, dtype=bool)
    for row in rows:
        if row.candidate in c_index and row.case in n_index and row.label in k_index:
            at = (c_index[row.candidate], n_index[row.case], k_index[row.label])
            out[at] = getattr(row, metric)
            filled[at] = True
    if not filled.all():
        c, n, k = (int(i[0]) for i in np.nonzero(~filled))
        raise ValueError(
            f"no {metric} for candidate {candidates[c]}, case {cases[n]}, label {labels[k]}"
        )
    return out


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(values)) if values.size else math.nan


def _nanmedian(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmedian(values)) if values.size else math.nan


@dataclass
class ClassSummary:
    """Means over the cases where a metric is defined."""

    dice: float
    dice_median: float
    iou: float
    hd95_mm: float
    nsd: float
    ref_volume_mm3: float
    pred_volume_mm3: float
    defined_cases: int  # cases where the reference or the prediction holds the class

    @classmethod
    def from_dict(cls, data: dict) -> ClassSummary:
        return cls(
            **{f.name: (math.nan if data[f.name] is None else data[f.name]) for f in fields(cls)}
        )


@dataclass
class CandidateSummary:
    name: str
    configurations: list[str]
    mean_dice: float  # mean foreground Dice: per-class means, then their mean
    classes: dict[int, ClassSummary]
    fold_mean_dice: dict[int, float]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["classes"] = {str(k): asdict(v) for k, v in self.classes.items()}
        data["fold_mean_dice"] = {str(k): v for k, v in self.fold_mean_dice.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> CandidateSummary:
        return cls(
            name=data["name"],
            configurations=list(data["configurations"]),
            mean_dice=float_or_nan(data["mean_dice"]),
            classes={int(k): ClassSummary.from_dict(v) for k, v in data["classes"].items()},
            fold_mean_dice={int(k): float_or_nan(v) for k, v in data["fold_mean_dice"].items()},
        )


@dataclass
class EvaluationSummary:
    """``summary.json``: what was evaluated and each candidate's means (simplicity order)."""

    dataset: str
    folds: list[int]
    num_folds: int
    num_cases: int
    total_cases: int
    cases: list[str]
    labels: dict[int, str]  # foreground label value -> name
    nsd_tolerance_mm: float
    tie_tolerance: float
    chosen: str  # the selection rule's pick before postprocessing
    candidates: list[CandidateSummary] = field(default_factory=list)
    notes: dict[str, str] = field(
        default_factory=dict
    )  # configurations left out (or out of ensembles), why
    time_budget: list[str] = field(
        default_factory=list
    )  # run-all --time-budget: the report's lines

    @property
    def complete(self) -> bool:
        return self.folds == list(range(self.num_folds))

    @property
    def candidate_names(self) -> list[str]:
        return [c.name for c in self.candidates]

    def candidate(self, name: str) -> CandidateSummary:
        return {c.name: c for c in self.candidates}[name]  # names are unique

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "folds": self.folds,
            "num_folds": self.num_folds,
            "complete_cross_validation": self.complete,
            "num_cases": self.num_cases,
            "total_cases": self.total_cases,
            "cases": self.cases,
            "labels": {str(k): v for k, v in self.labels.items()},
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "tie_tolerance": self.tie_tolerance,
            "chosen": self.chosen,
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": self.notes,
            "time_budget": self.time_budget,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationSummary:
        return cls(
            dataset=data["dataset"],
            folds=[int(f) for f in data["folds"]],
            num_folds=int(data["num_folds"]),
            num_cases=int(data["num_cases"]),
            total_cases=int(data["total_cases"]),
            cases=list(data["cases"]),
            labels={int(k): v for k, v in data["labels"].items()},
            nsd_tolerance_mm=float(data["nsd_tolerance_mm"]),
            tie_tolerance=float(data["tie_tolerance"]),
            chosen=data["chosen"],
            candidates=[CandidateSummary.from_dict(c) for c in data["candidates"]],
            notes=dict(data.get("notes", {})),
            time_budget=[str(line) for line in data.get("time_budget", [])],
        )

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> EvaluationSummary:
        return cls.from_dict(_read_evaluation_file(path))


def summarize_candidate(
    name: str,
    configurations: list[str],
    rows: list[CaseRow],
    cases: list[str],
    folds: dict[str, int],
    labels: list[int],
) -> CandidateSummary:
    """Means of one candidate's rows (``folds``: case -> fold)."""
    rows = [r for r in rows if r.candidate == name]
    metrics = {
        m: metric_matrix(rows, [name], cases, labels, m)[0]
        for m in ("dice", "iou", "hd95_mm", "nsd")
    }
    volumes = {
        m: metric_matrix(rows, [name], cases, labels, m)[0]
        for m in ("ref_volume_mm3", "pred_volume_mm3")
    }
    classes = {}
    for k, label in enumerate(labels):
        dice = metrics["dice"][:, k]
        classes[label] = ClassSummary(
            dice=_nanmean(dice),
            dice_median=_nanmedian(dice),
            iou=_nanmean(metrics["iou"][:, k]),
            hd95_mm=_nanmean(metrics["hd95_mm"][:, k]),
            nsd=_nanmean(metrics["nsd"][:, k]),
            ref_volume_mm3=_nanmean(volumes["ref_volume_mm3"][:, k]),
            pred_volume_mm3=_nanmean(volumes["pred_volume_mm3"][:, k]),
            defined_cases=int(np.count_nonzero(~np.isnan(dice))),
        )
    fold_of = np.array([folds[c] for c in cases])
    fold_mean = {
        int(f): mean_foreground_dice(metrics["dice"][fold_of == f])
        for f in sorted(set(fold_of.tolist()))
    }
    return CandidateSummary(
        name, list(configurations), mean_foreground_dice(metrics["dice"]), classes, fold_mean
    )


def load_evaluation(paths: DatasetPaths) -> tuple[EvaluationSummary, BootstrapResult]:
    command = f"toolkit evaluate {paths.name}"
    summary_data = _read_evaluation_file(paths.evaluation_summary_json, command)
    bootstrap_data = _read_evaluation_file(paths.bootstrap_json, command)
    try:
        summary = EvaluationSummary.from_dict(summary_data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolkitError(
            f"is not an evaluation summary ({exc}): run `{command}` again",
            paths.evaluation_summary_json,
        ) from None
    try:
        bootstrap = BootstrapResult.from_dict(bootstrap_data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolkitError(
            f"is not a bootstrap result ({exc}): run `{command}` again", paths.bootstrap_json
        ) from None
    if (
        bootstrap.chosen != summary.chosen
        or [c.name for c in bootstrap.candidates] != summary.candidate_names
    ):
        raise ToolkitError(
            f"does not belong to {paths.evaluation_summary_json.name}: run `{command}` again",
            paths.bootstrap_json,
        )
    return summary, bootstrap


def evaluation_digest(paths: DatasetPaths) -> str:
    """Identifies the evaluation a selection was made from."""
    return hashlib.sha256(paths.evaluation_summary_json.read_bytes()).hexdigest()[:16]


def _read_evaluation_file(path: Path, command: str = "toolkit evaluate DATASET") -> dict:
    """A JSON object from an evaluation file; missing or broken, it says to run ``command``."""
    return read_json(path, what="evaluation file", producer=command)
