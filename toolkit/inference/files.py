"""Predicting image files: a file or a folder of cases, one configuration or an ensemble of them.

Cases are found as :mod:`toolkit.inference.inputs` says, then read, predicted and written one
at a time, each reported as a :class:`CaseReport` (time, windows, output); the person at the
terminal gets one summary line (:func:`log_prediction_summary`); ``on_written`` is called with
each written case (``toolkit predict --preview`` draws its picture there). An ensemble of
configurations averages their probabilities per case
(:func:`~toolkit.inference.ensemble.average_probabilities`) and takes the argmax.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.labels import labels_from_probabilities
from toolkit.core.postprocessing import Postprocessing
from toolkit.errors import ToolkitError
from toolkit.inference.case_predictor import CasePredictor
from toolkit.inference.ensemble import average_probabilities
from toolkit.inference.export import Prediction
from toolkit.inference.inputs import InputCase, find_input_cases, read_input_case
from toolkit.io.atomic import sweep_temporaries
from toolkit.io.images import Geometry, has_image_suffix, strip_image_suffix
from toolkit.progress import info, progress_bar
from toolkit.workspace import PREVIEW_ENDING, PROBABILITIES_ENDING

# after a case is written: its first channel (z, y, x), its prediction, the label map's path.
# A hook, so that this module (which the container image runs) never imports matplotlib.
WrittenHook = Callable[[np.ndarray, Prediction, Path], None]


@dataclass(frozen=True)
class CaseReport:
    case: str
    seconds: float
    windows: int
    output: Path
    skipped: bool = False  # complete before this run (--continue)


def predict_paths(
    predictors: Sequence[CasePredictor],
    input_path: str | Path,
    output: str | Path,
    save_probabilities: bool = False,
    postprocessing: Postprocessing | None = None,
    quiet: bool = False,
    on_written: WrittenHook | None = None,
    is_complete: Callable[[Path], bool] | None = None,
) -> list[CaseReport]:
    """Predict a file or a folder (see :mod:`toolkit.inference.inputs`) into ``output``.

    Several predictors (configurations) form an ensemble: their probabilities are averaged.
    ``output`` is a folder (``CASE<ending>`` per case, ``CASE.npz`` with probabilities), or a
    file name when the input is one case. Cases are read, predicted and written one at a
    time. With ``is_complete`` (``predict --continue``), a case whose output it accepts is
    skipped: every file is written atomically, so one that exists is whole.
    """
    if not predictors:
        raise ValueError("predict_paths needs at least one predictor")
    channels = {p.num_input_channels for p in predictors}
    if len(channels) != 1:
        raise ToolkitError(
            f"the ensemble's models need different numbers of channels: {sorted(channels)}"
        )
    num_channels = channels.pop()
    cases = find_input_cases(input_path, num_channels)
    targets = _output_paths(cases, Path(output))
    sweep_output_temporaries(targets)
    reports = []
    with progress_bar(quiet) as bar:
        case_task = bar.add_task("cases", total=len(cases))
        window_task = bar.add_task("windows", total=None)
        for case, target in zip(cases, targets, strict=True):
            if is_complete is not None and is_complete(target):
                reports.append(CaseReport(case.case, 0.0, 0, target, skipped=True))
                bar.advance(case_task)
                continue
            start = time.perf_counter()
            image, geometry = read_input_case(case, num_channels)
            windows = sum(p.estimate_windows(image.shape[1:], geometry) for p in predictors)
            bar.reset(window_task, total=windows, description=case.case)
            counted: list[int] = []

            def advance(n: int, counted=counted) -> None:
                counted.append(n)
                bar.advance(window_task, n)

            if len(predictors) == 1:
                prediction = predictors[0].predict_case(
                    image, geometry, with_probabilities=save_probabilities, on_windows=advance
                )
            else:
                prediction = predict_with_ensemble(
                    predictors, image, geometry, save_probabilities, advance
                )
            first_channel = image[0].copy() if on_written is not None else None
            del image
            prediction = prediction.postprocessed(postprocessing)
            probabilities = probabilities_path(target) if save_probabilities else None
            prediction.save(target, probabilities)
            if on_written is not None:
                on_written(first_channel, prediction, target)
            del prediction, first_channel
            reports.append(CaseReport(case.case, time.perf_counter() - start, sum(counted), target))
            bar.advance(case_task)
    return reports


def predict_with_ensemble(
    predictors: Sequence[CasePredictor],
    image: np.ndarray,
    geometry: Geometry,
    with_probabilities: bool = True,
    on_windows: Callable[[int], None] | None = None,
) -> Prediction:
    """An ensemble of configurations: the mean of their probabilities, then the argmax."""
    if not predictors:
        raise ValueError("an ensemble needs at least one predictor")

    def each_member() -> Iterator[np.ndarray]:  # one member's probabilities at a time
        for p in predictors:
            prediction = p.predict_case(
                image, geometry, with_probabilities=True, on_windows=on_windows
            )
            assert prediction.probabilities is not None
            yield prediction.probabilities
            del prediction

    orders = {p.plans.label_model().regions_class_order for p in predictors}
    if len(orders) > 1:
        raise ToolkitError(
            "the configurations of an ensemble must share their labels (classes, or the same regions)"
        )
    regions = orders.pop()
    mean = average_probabilities(each_member())
    return Prediction(
        labels_from_probabilities(mean, regions),
        geometry,
        mean if with_probabilities else None,
        regions,
    )


def probabilities_path(label_path: Path) -> Path:
    return label_path.with_name(strip_image_suffix(label_path.name) + PROBABILITIES_ENDING)


def _output_paths(cases: list[InputCase], output: Path) -> list[Path]:
    if has_image_suffix(output):
        if len(cases) != 1:
            raise ToolkitError(
                f"is a file name but the input holds {len(cases)} cases: give a folder", output
            )
        return [output]
    return [output / f"{c.case}{c.file_ending}" for c in cases]


def sweep_output_temporaries(targets: Sequence[Path]) -> int:
    """Remove what a prediction killed mid-write left of these outputs (label maps, their
    probabilities and previews): the temporaries of these files only, since the folder may
    hold anything else."""
    removed = 0
    for folder in sorted({t.parent for t in targets}):
        names = set()
        for target in (t for t in targets if t.parent == folder):
            stem = strip_image_suffix(target.name)
            names |= {target.name, stem + PROBABILITIES_ENDING, stem + PREVIEW_ENDING}
        removed += sweep_temporaries(folder, targets=names)
    return removed


def log_prediction_summary(reports: Sequence[CaseReport]) -> None:
    """One line for the person at the terminal: cases, time, peak memory of this process."""
    # imported here: the resource module exists on Unix only
    import resource

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    done = [r for r in reports if not r.skipped]
    total = sum(r.seconds for r in done)
    skipped = len(reports) - len(done)
    info(
        f"predicted {len(done)} case(s) in {total:.1f} s ({total / max(1, len(done)):.1f} s per case), peak memory {peak_gb:.2f} GB"
        + (f"; {skipped} already complete, skipped (--continue)" if skipped else "")
    )
