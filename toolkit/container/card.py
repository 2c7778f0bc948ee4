"""The model card, ``export/README.md``: what an exported algorithm does and how well.

Written with every export (``--no-build`` too) and again after ``test-container``; ready to
paste into the algorithm's page on the platform. Facts come from the files the stages wrote:
``algorithm.json`` and ``ensemble.json`` (interfaces, labels, ensemble), the shipped
``plans.json`` (spacing, axis order), ``fingerprint.json`` (the training data),
``selection.json`` and ``evaluation/bootstrap.json`` (cross-validation Dice per class with
bootstrap intervals), the training images' headers (orientation), and ``export.json`` /
``container-test.json`` (time and memory per case). A missing source leaves its section
saying which command makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

import toolkit
from toolkit.container.limits import describe_job_memory
from toolkit.container.spec import AlgorithmSpec, EnsembleSpec
from toolkit.core.fingerprint import Fingerprint
from toolkit.core.plans import Plans
from toolkit.core.selection import Selection
from toolkit.io.atomic import write_text
from toolkit.workspace import MODEL_PLANS, DatasetPaths, ExportPaths

ORIENTATION_SAMPLE = 20  # training image headers read for the orientation
# ITK's physical axes point towards Left, Posterior, Superior
_TOWARDS = (("L", "R"), ("P", "A"), ("S", "I"))


def axis_directions(direction: tuple[float, ...] | list[float]) -> str:
    """Where each voxel axis (i, j, k) points, e.g. ``"LPS"`` for the identity (pure)."""
    size = int(round(len(direction) ** 0.5))
    matrix = np.asarray(direction, dtype=float).reshape(size, size)
    letters = []
    for axis in range(size):
        column = matrix[:, axis]
        dominant = int(np.argmax(np.abs(column)))
        positive, negative = _TOWARDS[dominant]
        letters.append(positive if column[dominant] >= 0 else negative)
    return "".join(letters)


@dataclass
class CardFacts:
    """Everything the card says, gathered from files (``None``: not available)."""

    spec: AlgorithmSpec
    ensemble: EnsembleSpec
    record: dict[str, Any]
    plans: Plans | None = None
    fingerprint: Fingerprint | None = None
    selection: Selection | None = None
    bootstrap: dict[str, Any] | None = None  # the chosen candidate's entry of bootstrap.json
    orientations: dict[str, int] = field(default_factory=dict)  # "LPS" -> cases
    test_cases: list[dict[str, Any]] = field(default_factory=list)
    memory_limit: str = ""
    toolkit_version: str = toolkit.__version__


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _interfaces_section(spec: AlgorithmSpec) -> list[str]:
    lines = ["## Interfaces", ""]
    for k, interface in enumerate(spec.interfaces):
        lines.append(f"Interface {k + 1}:")
        lines.append("")
        rows = [
            [
                "input",
                s.slug,
                s.kind,
                f"`{s.relative_path}`",
                spec.channel_names[s.channel] if s.channel is not None else "not read",
            ]
            for s in interface.inputs
        ]
        rows += [
            [
                "output",
                s.slug,
                s.kind,
                f"`{s.relative_path}`",
                ", ".join(f"{g.voxel_value}: {g.name}" for g in s.overlay_segments)
                or "label volumes (JSON)",
            ]
            for s in interface.outputs
        ]
        lines += _table(["", "socket", "kind", "relative path", "channel / segments"], rows)
        lines.append("")
    return lines


def _data_section(facts: CardFacts) -> list[str]:
    spec, lines = facts.spec, ["## What it segments", ""]
    labels = sorted(spec.labels.items(), key=lambda kv: kv[1])
    lines += _table(["value", "label"], [[str(v), n] for n, v in labels])
    lines += ["", f"Channels (in order): {', '.join(spec.channel_names)}.", ""]
    if facts.plans is not None:
        config = facts.plans.configuration(facts.ensemble.configurations[0])
        backward = facts.plans.transpose_backward
        spacing = [config.target_spacing[i] for i in backward]  # (z, y, x)
        lines.append(
            f"Expected spacing: the network works at {' x '.join(_f(v, 3) for v in spacing[::-1])} mm "
            f"(x, y, z; {facts.ensemble.configurations[0]}); images at other spacings are resampled "
            "to it and the prediction back to the input's grid."
        )
        lines.append("")
    if facts.orientations:
        found = ", ".join(f"{code} ({n} case(s))" for code, n in facts.orientations.items())
        lines.append(
            f"Orientation: images are used in their stored voxel order, without reorientation, as "
            f"in training; voxel axes (i, j, k) of the training images point towards {found}. "
            "Inputs stored in another orientation will be segmented worse."
        )
        lines.append("")
    fp = facts.fingerprint
    if fp is None:
        lines += [
            "No fingerprint.json: run `toolkit fingerprint` for the training data's summary.",
            "",
        ]
    else:
        spacings = np.asarray(fp.spacings, dtype=float)
        shapes = np.asarray([c.shape_before_cropping for c in fp.cases], dtype=float)
        lines += [
            "## Training data (fingerprint)",
            "",
            f"{fp.num_training} training cases; median shape {' x '.join(str(int(v)) for v in np.median(shapes, 0)[::-1])} voxels "
            f"(x, y, z), median spacing {' x '.join(_f(v) for v in np.median(spacings, 0)[::-1])} mm, spacing from "
            f"{' x '.join(_f(v) for v in spacings.min(0)[::-1])} to {' x '.join(_f(v) for v in spacings.max(0)[::-1])} mm.",
            "",
        ]
        rows = [
            [
                name,
                _f(s.mean, 1),
                _f(s.std, 1),
                f"{_f(s.percentile_00_5, 1)} .. {_f(s.percentile_99_5, 1)}",
            ]
            for name, s in zip(spec.channel_names, fp.intensity, strict=False)
        ]
        lines += _table(["channel", "foreground mean", "std", "0.5 .. 99.5 percentile"], rows)
        lines.append("")
    return lines


def _model_section(facts: CardFacts) -> list[str]:
    e = facts.ensemble
    pp = e.postprocessing
    steps = []
    if pp.largest_component_foreground:
        steps.append("largest connected component of the foreground")
    if pp.largest_component_classes:
        steps.append(f"largest component of class(es) {pp.largest_component_classes}")
    lines = [
        "## Model",
        "",
        f"- Configuration(s): {' + '.join(e.configurations)}"
        + (" (probabilities averaged)" if len(e.configurations) > 1 else ""),
        f"- Folds: {', '.join(str(f) for f in e.folds)} (logits averaged); test-time mirroring {'on' if e.use_mirroring else 'off'}",
        f"- Postprocessing: {'; '.join(steps) or 'none'}",
        "",
        "## Cross-validation",
        "",
    ]
    sel = facts.selection
    if sel is None:
        return lines + [
            "No selection.json: run `toolkit select` for the cross-validation scores.",
            "",
        ]
    partial = (
        ""
        if sel.complete_cross_validation
        else " (a partial cross-validation: not every fold was trained)"
    )
    lines.append(
        f"Mean foreground Dice {_f(sel.mean_dice)} (95% bootstrap interval {_f(sel.interval.low)} .. "
        f"{_f(sel.interval.high)}) over {sel.num_cases} cases{partial}; after postprocessing {_f(sel.mean_dice_postprocessed)}."
    )
    lines.append("")
    boot = facts.bootstrap or {}
    intervals = boot.get("class_intervals", {})
    rows = []
    for value in sorted(sel.class_dice):
        low, high = intervals.get(str(value), [None, None])
        interval = "n/a" if low is None else f"{_f(low)} .. {_f(high)}"
        name = sel.labels.get(value) or next(
            (n for n, v in facts.spec.labels.items() if v == value), str(value)
        )
        rows.append(
            [
                f"{value}: {name}",
                _f(sel.class_dice[value]),
                interval,
                _f(sel.class_dice_postprocessed.get(value)),
            ]
        )
    lines += _table(["class", "Dice", "95% bootstrap interval", "after postprocessing"], rows)
    lines.append("")
    return lines


def _runtime_section(facts: CardFacts) -> list[str]:
    lines = ["## Time and memory per case", ""]
    if not facts.test_cases:
        return lines + ["No container test yet: run `toolkit test-container` to measure them.", ""]
    rows = []
    for c in facts.test_cases:
        gpu = "" if c.get("gpu_peak_mb") is None else f", GPU {c['gpu_peak_mb']:.0f} MB"
        memory = "n/a" if c.get("peak_memory_mb") is None else f"{c['peak_memory_mb']:.0f} MB{gpu}"
        rows.append(
            [
                c["case"],
                str(c.get("interface", 1)),
                c.get("mode", ""),
                f"{c['seconds']:.1f} s",
                memory,
                "ok" if c.get("ok") else "FAILED",
            ]
        )
    lines += _table(["case", "interface", "run", "time", "peak memory", "result"], rows)
    lines.append("")
    if facts.memory_limit:
        lines.append(f"Each job had {describe_job_memory(facts.memory_limit)}.")
    if facts.record.get("gpu_memory"):
        lines.append(str(facts.record["gpu_memory"]) + ".")
    lines.append(
        "A dry run measures the entrypoint process on this machine; a container run the whole "
        "container, as the platform limits it."
    )
    return lines + [""]


def reproduce_options(record: dict[str, Any]) -> str:
    """The export's own options, as command-line text (pure)."""
    parts = []
    if record.get("model_mode") == "tarball":
        parts.append("--model-mode tarball")
    if record.get("device") == "cuda":
        parts.append("--device cuda")
    # always named: the default runtime has changed before (an export without it: torch)
    parts.append(f"--runtime {record.get('runtime', 'torch')}")
    if record.get("interfaces_file"):
        parts.append(f"--interfaces {record['interfaces_file']}")
    parts += [f"--channel-map {m}" for m in record.get("channel_map") or []]
    if record.get("memory") and record["memory"] != "8g":
        parts.append(f"--memory {record['memory']}")
    return "".join(f" {p}" for p in parts)


def render_model_card(facts: CardFacts) -> str:
    spec, record = facts.spec, facts.record
    lines = [
        f"# {spec.dataset_name}: segmentation ({' + '.join(facts.ensemble.configurations)})",
        "",
        f"A Grand Challenge algorithm exported by toolkit {facts.toolkit_version} "
        f"(image `{record.get('tag', '')}`, {record.get('device', spec.device)}, "
        f"networks run by {record.get('runtime', spec.runtime)}, model {record.get('model_mode', 'baked')}).",
        "",
    ]
    lines += _data_section(facts) + _interfaces_section(spec)
    lines += _model_section(facts) + _runtime_section(facts)
    options = (
        f" --model-mode {record['model_mode']}" if record.get("model_mode") == "tarball" else ""
    )
    options += f" --runtime {record.get('runtime', 'torch')}"
    lines += [
        "## Reproduce",
        "",
        "```",
        f"toolkit run-all {spec.dataset_name}",
        f"toolkit export-container {spec.dataset_name}{options}",
        f"toolkit test-container {spec.dataset_name}",
        "```",
        "",
        f"toolkit {facts.toolkit_version}; the exact options of the export are in `export.json`.",
        "",
    ]
    return "\n".join(lines)


# --- gathering the facts ---------------------------------------------------------------


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_orientations(paths: DatasetPaths) -> dict[str, int]:
    """Axis directions of (up to ``ORIENTATION_SAMPLE``) training images' headers."""
    found: dict[str, int] = {}
    images = sorted(paths.images_tr.glob("*_0000.*")) if paths.images_tr.is_dir() else []
    for image in images[:ORIENTATION_SAMPLE]:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(image))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        code = axis_directions(reader.GetDirection())
        found[code] = found.get(code, 0) + 1
    return found


def gather_facts(paths: DatasetPaths, export: ExportPaths) -> CardFacts:
    spec = AlgorithmSpec.load(export.algorithm_json)
    ensemble = EnsembleSpec.load(export.ensemble_json)
    facts = CardFacts(spec=spec, ensemble=ensemble, record=_json(export.record) or {})
    plans_path = DatasetPaths(export.model).model_dir(ensemble.configurations[0]) / MODEL_PLANS
    if plans_path.is_file():
        facts.plans = Plans.load(plans_path)
    if paths.fingerprint_json.is_file():
        facts.fingerprint = Fingerprint.load(paths.fingerprint_json)
    if paths.selection_json.is_file():
        facts.selection = Selection.load(paths.selection_json)
        boot = _json(paths.bootstrap_json) or {}
        chosen = [
            c for c in boot.get("candidates", []) if c.get("name") == facts.selection.candidate
        ]
        facts.bootstrap = chosen[0] if chosen else None
    facts.orientations = training_orientations(paths)
    tested = _json(export.test_report)
    if tested and tested.get("cases"):
        facts.test_cases, facts.memory_limit = tested["cases"], str(tested.get("memory_limit", ""))
    elif facts.record.get("test_runs") or facts.record.get("test_run"):
        facts.test_cases = facts.record.get("test_runs") or [facts.record["test_run"]]
        facts.memory_limit = str(facts.record.get("memory", ""))
    return facts


def write_model_card(paths: DatasetPaths, export: ExportPaths) -> Path:
    write_text(export.model_card, render_model_card(gather_facts(paths, export)))
    return export.model_card
