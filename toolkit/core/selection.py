"""``selection.json``: the chosen candidate, its folds and postprocessing, and why.

What later stages read (the container export, run-all)::

    selection = Selection.load(paths.selection_json)
    selection.configurations   # ["3d_fullres"] or two names for an ensemble
    selection.folds            # the folds whose models to use
    selection.postprocessing   # toolkit.core.postprocessing.Postprocessing

The rest is the evidence: cross-validation Dice before and after postprocessing, every
postprocessing step tried, the chosen candidate's bootstrap interval and rank-first
frequency, and the table of every candidate behind the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.core.constants import CONFIDENCE, TIE_TOLERANCE
from toolkit.core.postprocessing import Postprocessing, PostprocessingStep
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.confine import plain_name
from toolkit.io.json_files import float_or_nan, read_json


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.low, self.high]

    @classmethod
    def from_list(cls, values: list) -> Interval:
        low, high = values
        return cls(float_or_nan(low), float_or_nan(high))

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class CandidateScore:
    """One row of the table behind the choice."""

    name: str
    configurations: list[str]
    mean_dice: float
    interval: Interval
    rank_first_frequency: float
    difference_to_chosen: float  # chosen minus this candidate
    difference_interval: Interval
    chosen_better_fraction: float

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "configurations": list(self.configurations),
            "mean_dice": self.mean_dice,
            "interval": self.interval.to_list(),
            "rank_first_frequency": self.rank_first_frequency,
            "difference_to_chosen": self.difference_to_chosen,
            "difference_interval": self.difference_interval.to_list(),
            "chosen_better_fraction": self.chosen_better_fraction,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CandidateScore:
        return cls(
            name=str(data["name"]),
            configurations=[str(c) for c in data["configurations"]],
            mean_dice=float_or_nan(data["mean_dice"]),
            interval=Interval.from_list(data["interval"]),
            rank_first_frequency=float(data["rank_first_frequency"]),
            difference_to_chosen=float_or_nan(data["difference_to_chosen"]),
            difference_interval=Interval.from_list(data["difference_interval"]),
            chosen_better_fraction=float(data["chosen_better_fraction"]),
        )


@dataclass
class Selection:
    dataset: str
    candidate: str  # "3d_fullres", or "2d+3d_fullres" for an ensemble
    configurations: list[str]
    folds: list[int]
    postprocessing: Postprocessing
    mean_dice: float  # cross-validation mean foreground Dice, before postprocessing
    mean_dice_postprocessed: float
    class_dice: dict[int, float]
    class_dice_postprocessed: dict[int, float]
    interval: Interval  # bootstrap interval of mean_dice
    rank_first_frequency: float  # fraction of virtual validation sets the chosen candidate wins
    labels: dict[int, str] = field(default_factory=dict)
    num_cases: int = 0
    complete_cross_validation: bool = True
    bootstrap_samples: int = 0
    confidence: float = CONFIDENCE
    tie_tolerance: float = TIE_TOLERANCE
    postprocessing_steps: list[PostprocessingStep] = field(default_factory=list)
    candidates: list[CandidateScore] = field(default_factory=list)
    evaluation_digest: str = ""  # of the summary.json this selection was made from

    @property
    def is_ensemble(self) -> bool:
        return len(self.configurations) > 1

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "candidate": self.candidate,
            "configurations": list(self.configurations),
            "folds": list(self.folds),
            "postprocessing": self.postprocessing.to_dict(),
            "mean_dice": self.mean_dice,
            "mean_dice_postprocessed": self.mean_dice_postprocessed,
            "class_dice": {str(k): v for k, v in self.class_dice.items()},
            "class_dice_postprocessed": {
                str(k): v for k, v in self.class_dice_postprocessed.items()
            },
            "interval": self.interval.to_list(),
            "rank_first_frequency": self.rank_first_frequency,
            "labels": {str(k): v for k, v in self.labels.items()},
            "num_cases": self.num_cases,
            "complete_cross_validation": self.complete_cross_validation,
            "bootstrap_samples": self.bootstrap_samples,
            "confidence": self.confidence,
            "tie_tolerance": self.tie_tolerance,
            "postprocessing_steps": [s.to_dict() for s in self.postprocessing_steps],
            "candidates": [c.to_dict() for c in self.candidates],
            "evaluation_digest": self.evaluation_digest,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str | Path | None = None) -> Selection:
        try:
            configurations = [str(c) for c in data["configurations"]]
            folds = [int(f) for f in data["folds"]]
            if not configurations or not folds:
                raise ValueError("configurations and folds must not be empty")
            for config in configurations:  # each names a folder models/<config>
                plain_name(config, what="configuration", source=source)
            return cls(
                dataset=str(data["dataset"]),
                candidate=str(data["candidate"]),
                configurations=configurations,
                folds=folds,
                postprocessing=Postprocessing.from_dict(data["postprocessing"], source),
                mean_dice=float_or_nan(data["mean_dice"]),
                mean_dice_postprocessed=float_or_nan(data["mean_dice_postprocessed"]),
                class_dice={int(k): float_or_nan(v) for k, v in data["class_dice"].items()},
                class_dice_postprocessed={
                    int(k): float_or_nan(v) for k, v in data["class_dice_postprocessed"].items()
                },
                interval=Interval.from_list(data["interval"]),
                rank_first_frequency=float(data["rank_first_frequency"]),
                labels={int(k): str(v) for k, v in data.get("labels", {}).items()},
                num_cases=int(data.get("num_cases", 0)),
                complete_cross_validation=bool(data.get("complete_cross_validation", True)),
                bootstrap_samples=int(data.get("bootstrap_samples", 0)),
                confidence=float(data.get("confidence", CONFIDENCE)),
                tie_tolerance=float(data.get("tie_tolerance", TIE_TOLERANCE)),
                postprocessing_steps=[
                    PostprocessingStep.from_dict(s) for s in data.get("postprocessing_steps", [])
                ],
                candidates=[CandidateScore.from_dict(c) for c in data.get("candidates", [])],
                evaluation_digest=str(data.get("evaluation_digest", "")),
            )
        except ToolkitError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ToolkitError(
                f"is not a valid selection ({what}): run `toolkit select` again", source
            ) from None

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        data = read_json(path, what="selection", producer=f"toolkit select {path.parent.name}")
        return cls.from_dict(data, path)
