"""The fold's final validation: every validation case predicted whole, in its original geometry.

As the reference does, cases are predicted from their preprocessed arrays (no second
preprocessing pass) by the inference :class:`~toolkit.inference.predictor.Predictor` (full
sliding window: step 0.5, Gaussian weighting, mirroring over every axis), then exported as
any prediction is (:mod:`toolkit.inference.export`): resampled back to the cropped shape,
un-transposed, pasted into the uncropped extent. Written per case:
``validation/CASE.nii.gz`` (labels, the input's exact geometry) and ``CASE.npz``
(``probabilities``, float16 ``(classes, z, y, x)``); then ``summary.json`` with each case's
Dice per class (or region, keyed by its position) against ``raw/labelsTr`` (voxels holding
the ignore label left out) and the means, written last so its presence marks
the validation complete. A first cascade stage also stores its out-of-fold predictions for
the next stage (:mod:`toolkit.training.cascade`). With several processes the cases are
shared out and rank 0 writes the summary.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from toolkit.core.cascade import with_cascade_channels
from toolkit.evaluation.metrics import case_metrics
from toolkit.inference.export import Prediction, logits_to_original
from toolkit.inference.options import ModelOptions
from toolkit.inference.predictor import Predictor
from toolkit.io.atomic import sweep_temporaries, write_json
from toolkit.io.images import read_image
from toolkit.io.preprocessed import load_case
from toolkit.progress import info, track
from toolkit.training import cascade
from toolkit.training.distributed import DistContext
from toolkit.training.job import TrainingJob
from toolkit.workspace import label_file


def validation_complete(job: TrainingJob) -> bool:
    return job.paths.validation_summary(job.configuration.name, job.fold).is_file()


def network_input(job: TrainingJob, case: str) -> tuple[np.ndarray, object]:
    """The preprocessed image, with the previous stage's one-hot channels for a cascade."""
    data, _, props = load_case(job.data_folder, case)
    data = np.array(data, dtype=np.float32)  # a private, writable copy of the memory map
    if job.previous_folder is not None:
        previous = np.load(cascade.prediction_path(job.previous_folder, case))[0]
        data = with_cascade_channels(job.plans, data, previous)
    return data, props


def validate_fold(
    job: TrainingJob,
    ctx: DistContext,
    network: torch.nn.Module,
    device: torch.device,
    precision: str,
) -> dict | None:
    cfg, plans = job.configuration, job.plans
    network.deep_supervision = False
    predictor = Predictor.from_networks(
        plans,
        cfg,
        [network],
        ModelOptions(
            device=device, precision=precision, use_mirroring=job.options.validation_mirroring
        ),
    )
    followers = cascade.next_stages(plans, cfg)
    model = plans.label_model()
    labels = list(model.regions)  # the keys of foreground classes or regions
    mine = job.split.val[ctx.rank :: ctx.world_size]
    for follower in followers:
        # the next stage's folder is shared by every fold (trained at once under Ray): only
        # what a killed validation of this fold left of its own cases
        sweep_temporaries(
            job.paths.next_stage_dir(cfg.name, follower.name),
            targets={cascade.prediction_path(Path(), case).name for case in mine},
        )
    rows = []
    for case in track(
        mine, f"validating {cfg.name} fold {job.fold}", quiet=job.options.quiet or not ctx.is_main
    ):
        data, props = network_input(job, case)
        logits = predictor.predict_logits(data)
        if followers:
            on_grid = [t.float().cpu().numpy() for t in logits]
            for follower in followers:
                cascade.export_case(plans, cfg, follower, job.paths, case, on_grid)
            del on_grid
        prediction, probabilities = logits_to_original(
            logits, props, plans, cfg, with_probabilities=True
        )
        geometry = props.original_geometry
        Prediction(prediction, geometry, probabilities, model.regions_class_order).save(
            job.paths.validation_prediction(cfg.name, job.fold, case),
            job.paths.validation_probabilities(cfg.name, job.fold, case),
        )
        reference, _ = read_image(job.paths.labels_tr / label_file(case))
        metrics = case_metrics(
            reference, prediction, model.regions, geometry.spacing_zyx, ignore=model.ignore
        )
        rows.append({"case": case, "dice": {str(m.label): _finite(m.dice) for m in metrics}})
    rows = _gather(ctx, rows)
    if not ctx.is_main:
        return None
    summary = summarize_validation(sorted(rows, key=lambda r: r["case"]), labels)
    schedule = job.run_settings.get("schedule", {})
    summary["training"] = {  # what the report says about the budget behind these numbers
        "epochs": schedule.get("epochs"),
        "iterations_per_epoch": schedule.get("iterations_per_epoch"),
        "mirroring": bool(job.options.validation_mirroring),
        "precision": precision,
    }
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
    every: list[list[dict]] = [[] for _ in range(ctx.world_size)]
    dist.all_gather_object(every, rows)
    return [r for part in every for r in part]


def summarize_validation(rows: list[dict], labels: list[int]) -> dict:
    """The fold's ``summary.json``: each case's Dice, the mean per class and over classes."""
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
