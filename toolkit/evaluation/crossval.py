"""The cross-validation to evaluate: its folds and cases, and which configurations have
complete validation predictions for it.

The split is training's ``splits.json``: a list of folds, each ``{"train": [...], "val":
[...]}`` (an object ``{"folds": [...]}`` or ``"validation"`` instead of ``"val"`` are read
too). Only the validation lists matter here. By default every fold of the split is
evaluated; a subset (``--folds 0,1``) evaluates the validation cases of those folds only and
is reported as a partial cross-validation.

A configuration is a candidate when every validation case of every evaluated fold has its
label map ``models/<config>/fold_k/validation/CASE.nii.gz``; it can join an ensemble when
every case also has its probabilities ``CASE.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.core.splits import read_splits
from toolkit.errors import MissingStageError, ToolkitError
from toolkit.evaluation.candidates import Candidate, build_candidates, configuration_rank
from toolkit.io.dataset_json import DatasetInfo, training_cases
from toolkit.workspace import DatasetPaths


def train_command(paths: DatasetPaths, config: str, fold: int | str) -> str:
    return f"toolkit train {paths.name} {config} {fold}"


@dataclass(frozen=True)
class ValidationCase:
    case: str
    fold: int
    reference: Path  # raw/labelsTr/CASE.nii.gz


@dataclass(frozen=True)
class CrossValidation:
    """The folds evaluated and their validation cases (sorted by case name)."""

    folds: list[int]
    num_folds: int  # folds in the split
    cases: list[ValidationCase]
    total_cases: int  # validation cases of all folds of the split

    @property
    def complete(self) -> bool:
        return self.folds == list(range(self.num_folds))

    def describe(self) -> str:
        scope = (
            "all"
            if self.complete
            else f"partial cross-validation: folds {','.join(map(str, self.folds))} of"
        )
        return f"{scope} {self.num_folds} folds, {len(self.cases)} of {self.total_cases} validation cases"


def load_cross_validation(
    paths: DatasetPaths, info: DatasetInfo, folds: list[int] | None = None
) -> CrossValidation:
    if not paths.splits_json.is_file():
        raise MissingStageError(paths.splits_json, train_command(paths, "CONFIG", "FOLD"))
    split = [fold.val for fold in read_splits(paths.splits_json)]
    wanted = list(range(len(split))) if folds is None else sorted(set(folds))
    bad = [f for f in wanted if not 0 <= f < len(split)]
    if bad:
        raise ToolkitError(
            f"fold(s) {bad} do not exist: the split defines folds 0..{len(split) - 1}",
            paths.splits_json,
        )
    if not wanted:
        raise ToolkitError("no folds to evaluate", paths.splits_json)
    seen: dict[str, int] = {}
    for fold, val in enumerate(split):
        for case in val:
            if case in seen:
                raise ToolkitError(
                    f"case {case} is in the validation set of folds {seen[case]} and {fold}",
                    paths.splits_json,
                )
            seen[case] = fold
    labels = {c.case: c.label for c in training_cases(paths, info)}
    cases = []
    for case, fold in sorted(seen.items()):
        if fold not in wanted:
            continue
        reference = labels.get(case)
        if reference is None or not reference.is_file():
            raise ToolkitError(
                f"validation case {case} of fold {fold} has no reference label in {paths.labels_tr}",
                paths.splits_json,
            )
        cases.append(ValidationCase(case, fold, reference))
    if not cases:
        raise ToolkitError(f"folds {wanted} have no validation cases", paths.splits_json)
    return CrossValidation(folds=wanted, num_folds=len(split), cases=cases, total_cases=len(seen))


@dataclass(frozen=True)
class ConfigurationStatus:
    """Which validation files of one configuration exist for a cross-validation."""

    name: str
    missing_labels: list[Path] = field(default_factory=list)
    missing_probabilities: list[Path] = field(default_factory=list)
    first_missing_fold: int | None = None

    @property
    def complete(self) -> bool:
        return not self.missing_labels

    @property
    def ensemble_ready(self) -> bool:
        return self.complete and not self.missing_probabilities

    def problem(self, paths: DatasetPaths) -> str | None:
        """Why it is not a candidate (or not in ensembles), with the command that fixes it."""
        if self.missing_labels:
            return (
                f"{len(self.missing_labels)} validation prediction(s) missing, first {self.missing_labels[0]}: "
                f"run `{train_command(paths, self.name, self.first_missing_fold)}`"
            )
        if self.missing_probabilities:
            return (
                f"no ensembles: {len(self.missing_probabilities)} probability file(s) missing, "
                f"first {self.missing_probabilities[0]}"
            )
        return None


def configuration_status(
    paths: DatasetPaths, config: str, cv: CrossValidation
) -> ConfigurationStatus:
    missing_labels: list[Path] = []
    missing_probabilities: list[Path] = []
    first_fold = None
    for vc in cv.cases:
        label = paths.validation_prediction(config, vc.fold, vc.case)
        if not label.is_file():
            missing_labels.append(label)
            first_fold = vc.fold if first_fold is None else min(first_fold, vc.fold)
        probabilities = paths.validation_probabilities(config, vc.fold, vc.case)
        if not probabilities.is_file():
            missing_probabilities.append(probabilities)
    return ConfigurationStatus(config, missing_labels, missing_probabilities, first_fold)


def trained_configurations(paths: DatasetPaths) -> list[str]:
    """Configurations with at least one numbered fold folder under ``models/``, simplest first
    (``fold_all`` has no held-out cases: it is no cross-validation fold)."""
    if not paths.models.is_dir():
        return []
    names = [d.name for d in paths.models.iterdir() if d.is_dir() and any(d.glob("fold_[0-9]*"))]
    return sorted(names, key=configuration_rank)


@dataclass
class CandidateSet:
    candidates: list[Candidate]  # simplicity order
    statuses: dict[str, ConfigurationStatus]
    notes: dict[str, str]  # configuration -> why it is not a candidate, or not in ensembles

    @property
    def configurations(self) -> list[str]:
        return sorted(
            {c for cand in self.candidates for c in cand.configurations}, key=configuration_rank
        )


def resolve_candidates(
    paths: DatasetPaths,
    cv: CrossValidation,
    configurations: list[str] | None = None,
    ensembles: bool = True,
) -> CandidateSet:
    """Candidates from the configurations asked for (default: every trained one).

    A configuration asked for by name must be complete; one found by looking is skipped with
    its reason when incomplete. Without any complete configuration the error names the
    missing file and the training command that writes it.
    """
    explicit = configurations is not None
    names = list(dict.fromkeys(configurations)) if explicit else trained_configurations(paths)
    if not names:
        raise MissingStageError(paths.models, train_command(paths, "CONFIG", "FOLD"))
    statuses = {name: configuration_status(paths, name, cv) for name in names}
    notes: dict[str, str] = {}
    for name, status in statuses.items():
        if not status.complete:
            if explicit:
                raise MissingStageError(
                    status.missing_labels[0], train_command(paths, name, status.first_missing_fold)
                )
            notes[name] = status.problem(paths) or ""
        elif not status.ensemble_ready and ensembles:
            notes[name] = status.problem(paths) or ""
    complete = [n for n, s in statuses.items() if s.complete]
    if not complete:
        first = statuses[names[0]]
        raise MissingStageError(
            first.missing_labels[0], train_command(paths, first.name, first.first_missing_fold)
        )
    members = [n for n in complete if statuses[n].ensemble_ready] if ensembles else []
    return CandidateSet(build_candidates(complete, members), statuses, notes)
