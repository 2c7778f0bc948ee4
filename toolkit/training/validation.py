"""The fold's final validation: every validation case predicted whole, in its original geometry.

As the reference does, cases are predicted from their preprocessed arrays (no second
preprocessing pass) with the full sliding window (step 0.5, Gaussian weighting, mirroring
over every axis), then exported like any prediction: probabilities resampled back to the
cropped shape, un-transposed, pasted into the uncropped extent. Written per case:
``validation/CASE.nii.gz`` (labels, the input's exact geometry) and ``CASE.npz``
(``probabilities``, float16 ``(classes, z, y, x)``); then ``summary.json`` with each case's
Dice per class against ``raw/labelsTr`` and the means, written last so its presence marks
the validation complete. A first cascade stage also stores its out-of-fold predictions for
the next stage (:mod:`toolkit.training.cascade`). With several processes the cases are
shared out and rank 0 writes the summary.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from toolkit.evaluation.metrics import case_metrics
from toolkit.inference.sliding_window import WindowSettings, sliding_window_logits
from toolkit.io.atomic import atomic_path, write_json
from toolkit.io.images import Geometry, read_image, write_image
from toolkit.preprocessing.pipeline import revert_to_original
from toolkit.preprocessing.storage import load_case
from toolkit.progress import info, track
from toolkit.training import cascade
from toolkit.training.distributed import DistContext
from toolkit.training.job import TrainingJob
from toolkit.training.spatial import spatial_rules
from toolkit.workspace import label_file

PROBABILITIES_KEY = "probabilities"


def validation_complete(job: TrainingJob) -> bool:
    return job.paths.validation_summary(job.configuration.name, job.fold).is_file()


def network_input(job: TrainingJob, case: str) -> tuple[np.ndarray, object]:
    """The preprocessed image, with the previous stage's one-hot channels for a cascade."""
    data, _, props = load_case(job.data_folder, case)
    data = np.array(data, dtype=np.float32)  # a private, writable copy of the memory map
    if job.previous_folder is not None:
        previous = np.load(cascade.prediction_path(job.previous_folder, case))[0]
        foreground = sorted(v for v in job.plans.labels.values() if v > 0)
        onehot = np.stack([(previous == v) for v in foreground]).astype(np.float32)
        data = np.concatenate([data, onehot])
    return data, props


def window_settings(job: TrainingJob, precision: str) -> WindowSettings:
    cfg = job.configuration
    mirror = spatial_rules(cfg.patch_size).mirror_axes
    patch = tuple(int(p) for p in cfg.patch_size)
    if cfg.spatial_dims == 2:
        patch, mirror = (1, *patch), tuple(a + 1 for a in mirror)
    # a forward pass takes one training batch worth of windows (mirrored copies included)
    per_forward = max(cfg.batch_size, 2 ** len(mirror))
    return WindowSettings(patch, 0.5, mirror, per_forward, precision)  # type: ignore[arg-type]


def validate_fold(
    job: TrainingJob,
    ctx: DistContext,
    network: torch.nn.Module,
    device: torch.device,
    precision: str,
) -> dict | None:
    cfg, plans = job.configuration, job.plans
    network.eval()
    network.deep_supervision = False
    settings = window_settings(job, precision)
    followers = cascade.next_stages(plans, cfg)
    labels = sorted(v for v in plans.labels.values() if v > 0)
    mine = job.split.val[ctx.rank :: ctx.world_size]
    rows = []
    for case in track(
        mine, f"validating {cfg.name} fold {job.fold}", quiet=job.options.quiet or not ctx.is_main
    ):
        data, props = network_input(job, case)
        logits = sliding_window_logits(
            [network],
            torch.from_numpy(data),
            plans.num_classes,
            settings,
            device,
            torch.device("cpu"),
        )
        probabilities = torch.softmax(torch.stack(logits), dim=0).numpy()
        del logits
        full = revert_to_original(probabilities, props, plans, cfg)
        prediction = full.argmax(0).astype(np.uint8 if plans.num_classes <= 255 else np.uint16)
        geometry = Geometry.from_dict(props.geometry)
        write_image(job.paths.validation_prediction(cfg.name, job.fold, case), prediction, geometry)
        with atomic_path(job.paths.validation_probabilities(cfg.name, job.fold, case)) as tmp:
            np.savez_compressed(tmp, **{PROBABILITIES_KEY: full.astype(np.float16)})
        for follower in followers:
            cascade.export_case(plans, cfg, follower, job.paths, case, probabilities)
        reference, _ = read_image(job.paths.labels_tr / label_file(case))
        metrics = case_metrics(reference, prediction, labels, geometry.spacing_zyx)
        rows.append({"case": case, "dice": {str(m.label): _finite(m.dice) for m in metrics}})
    rows = _gather(ctx, rows)
    if not ctx.is_main:
        return None
    summary = summarize(sorted(rows, key=lambda r: r["case"]), labels)
    write_json(job.paths.validation_summary(cfg.name, job.fold), summary)
    mean = summary["mean_foreground_dice"]
    info(
        f"validation of {cfg.name} fold {job.fold}: mean Dice {'-' if mean is None else f'{mean:.4f}'} over {len(rows)} case(s)"
    )
    return summary


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _gather(ctx: DistContext, rows: list[dict]) -> list[dict]:
    if not ctx.enabled:
        return rows
    import torch.distributed as dist

    every: list[list[dict]] = [[] for _ in range(ctx.world_size)]
    dist.all_gather_object(every, rows)
    return [r for part in every for r in part]


def summarize(rows: list[dict], labels: list[int]) -> dict:
    per_class = {}
    for label in labels:
        values = [r["dice"][str(label)] for r in rows if r["dice"].get(str(label)) is not None]
        per_class[str(label)] = float(np.mean(values)) if values else None
    present = [v for v in per_class.values() if v is not None]
    return {
        "cases": rows,
        "mean_dice": per_class,
        "mean_foreground_dice": float(np.mean(present)) if present else None,
    }
