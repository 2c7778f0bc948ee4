"""The training loop: a short loop that calls its parts.

:func:`run` is what each training process does (started by
:func:`toolkit.training.stage.train_fold`): build the parts
(sampler, augmenter, network, loss, optimiser), load ``--pretrained`` weights at a start
(:mod:`toolkit.training.pretrained`) or restore a checkpoint, then for every epoch
set the learning rate, take the training steps on prefetched batches, measure the
validation loss and pseudo-Dice, and checkpoint; at the end write the final checkpoint and
predict the fold's validation cases (:mod:`toolkit.training.validation`; fold ``all`` has none).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.core.checkpoint import (
    KEY_NETWORK,
    KEY_OPTIMIZER,
    KEY_RNG,
    KEY_SCALER,
    load_checkpoint,
    save_checkpoint,
)
from toolkit.core.device import autocast, describe_precision, resolve_precision
from toolkit.io.atomic import sweep_temporaries
from toolkit.nets.unet import UNet, build_network
from toolkit.progress import info, progress_bar
from toolkit.training.augmentation.augmenter import Augmenter
from toolkit.training.augmentation.cascade_labels import CascadeAugmentation
from toolkit.training.augmentation.spatial import SpatialRules, spatial_rules
from toolkit.training.checkpoint import (
    TrainingState,
    build_checkpoint,
    plans_configuration_dict,
    restore_rng_state,
    training_state,
)
from toolkit.training.distributed import DistContext, batch_share, rank_device
from toolkit.training.history import (
    EpochRecord,
    mean_or_none,
    nan_to_none,
    plot_progress,
    update_ema,
    write_log,
)
from toolkit.training.job import TrainingJob
from toolkit.training.loader import TRAIN, VALIDATION, BatchKey, BatchMaker, Prefetcher, ReadyBatch
from toolkit.training.loss import (
    DeepSupervisionLoss,
    hard_counts,
    loss_scales,
    pseudo_dice,
)
from toolkit.training.pretrained import load_matching, pretrained_weights
from toolkit.training.sampling import CaseData, PatchSampler, foreground_flags
from toolkit.training.schedule import make_optimizer, set_lr
from toolkit.training.tracking import EpochLogger, Tracking, open_run_tracking
from toolkit.training.validation import validate_fold
from toolkit.workspace import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    PROGRESS_PLOT,
    TRAINING_LOG,
)


@dataclass
class FoldResult:
    fold_dir: Path
    epochs: int
    already_done: bool
    validation: dict | None


@dataclass
class Parts:
    network: UNet  # the plain module (checkpoints, validation)
    model: nn.Module  # what the steps call: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loss: DeepSupervisionLoss
    precision: str
    train_maker: BatchMaker
    val_maker: BatchMaker
    tracking: EpochLogger = field(default_factory=Tracking)  # rank 0: --logger backends


def run(job: TrainingJob, ctx: DistContext) -> FoldResult:
    device = rank_device(job.device, ctx.local_rank)
    if ctx.is_main:
        # of a training killed mid-write: its checkpoints, log and validation (this fold's
        # folder only: under the Ray executor other folds train at the same time)
        sweep_temporaries(job.fold_dir, recursive=True)
    torch.manual_seed(job.seed)
    parts = build_parts(job, ctx, device)
    if ctx.is_main:
        note = describe_precision(job.options.precision, parts.precision, device)
        info(f"training {job.configuration.name} fold {job.fold} on {device.type}, {note}")
    state = TrainingState()
    if job.pretrained is not None and job.start_from is None:
        match = load_matching(parts.network, pretrained_weights(job.pretrained))
        if ctx.is_main:
            info(match.describe(job.pretrained))
    if job.start_from is not None:
        state = restore(parts, job.start_from, device)
        if ctx.is_main:
            info(
                f"resuming {job.configuration.name} fold {job.fold} at epoch {state.epoch}, iteration {state.iteration}"
            )
    if ctx.is_main:
        parts.tracking = open_run_tracking(job, state.epoch)
    schedule = job.options.schedule
    last_save = time.monotonic()
    if not state.finished:
        keys = batch_keys(
            state, schedule.epochs, schedule.iterations_per_epoch, schedule.validation_iterations
        )
        with Prefetcher(
            lambda k: make(parts, k), keys, job.options.prefetch, job.options.threads_for(device)
        ) as batches:
            for epoch in range(state.epoch, schedule.epochs):
                last_save = run_epoch(job, ctx, parts, state, batches, epoch, last_save)
        state.finished = True
        if ctx.is_main:
            save(job, parts, state, CHECKPOINT_FINAL)
            (job.fold_dir / CHECKPOINT_LATEST).unlink(missing_ok=True)
    summary = None
    if job.final_validation:
        summary = validate_fold(job, ctx, parts.network, device, parts.precision)
    elif job.options.validate and ctx.is_main:
        info(
            f"{job.configuration.name} fold {job.fold}: no final validation, every case was trained on "
            "(its pseudo-Dice was measured on training cases, not held-out ones)"
        )
    if summary is not None:
        parts.tracking.log_final(summary)
    parts.tracking.close()
    return FoldResult(job.fold_dir, state.epoch, False, summary)


def run_epoch(
    job, ctx, parts: Parts, state: TrainingState, batches: Prefetcher, epoch: int, last_save: float
) -> float:
    schedule = job.options.schedule
    started = time.time()
    waited_before = batches.wait_s
    lr = schedule.lr(epoch)
    set_lr(parts.optimizer, lr)
    parts.model.train()
    losses = list(state.partial_train_losses) if state.iteration else []
    with progress_bar(job.options.quiet or not ctx.is_main) as bar:
        task = bar.add_task(
            f"epoch {epoch}", total=schedule.iterations_per_epoch, completed=state.iteration
        )
        for iteration in range(state.iteration, schedule.iterations_per_epoch):
            batch = expect(next(batches), BatchKey(epoch, TRAIN, iteration))
            losses.append(train_step(parts, batch, schedule.grad_clip))
            bar.advance(task)
            if ctx.is_main and time.monotonic() - last_save > job.options.checkpoint_every_s:
                state.iteration, state.partial_train_losses = iteration + 1, losses
                save(job, parts, state, CHECKPOINT_LATEST)
                last_save = time.monotonic()
    val_loss, counts = None, None
    parts.model.eval()
    for v in range(schedule.validation_iterations):
        loss, c = validation_step(parts, expect(next(batches), BatchKey(epoch, VALIDATION, v)))
        val_loss = (val_loss or 0.0) + loss / schedule.validation_iterations
        counts = c if counts is None else counts + c
    record = epoch_record(
        ctx,
        parts,
        state,
        epoch,
        losses,
        val_loss,
        counts,
        lr,
        started,
        batches.wait_s - waited_before,
    )
    state.history.append(asdict(record))
    state.epoch, state.iteration, state.partial_train_losses = epoch + 1, 0, []
    if ctx.is_main:
        report(job, parts, state, record)
        last_save = time.monotonic()
    return last_save


def expect(batch: ReadyBatch, key: BatchKey) -> ReadyBatch:
    if batch.key != key:
        raise RuntimeError(f"batch order broken: expected {key}, got {batch.key}")
    batch.wait()
    return batch


def batch_keys(
    state: TrainingState, epochs: int, iterations: int, validation_iterations: int
) -> Iterator[BatchKey]:
    for epoch in range(state.epoch, epochs):
        start = state.iteration if epoch == state.epoch else 0
        for i in range(start, iterations):
            yield BatchKey(epoch, TRAIN, i)
        for v in range(validation_iterations):
            yield BatchKey(epoch, VALIDATION, v)


def make(parts: Parts, key: BatchKey) -> ReadyBatch:
    return (parts.train_maker if key.phase == TRAIN else parts.val_maker)(key)


def train_step(parts: Parts, batch: ReadyBatch, grad_clip: float) -> float:
    parts.optimizer.zero_grad(set_to_none=True)
    with autocast(batch.input.device, parts.precision):
        outputs = parts.model(batch.input)
    loss = parts.loss(as_float32(outputs), batch.target)  # the loss in float32, always
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
        parts.optimizer.step()
    return float(loss.detach())


def as_float32(outputs):
    """A network's output(s) (a list under deep supervision) in float32, for the loss."""
    if isinstance(outputs, list | tuple):
        return [o.float() for o in outputs]
    return outputs.float()


@torch.no_grad()
def validation_step(parts: Parts, batch: ReadyBatch) -> tuple[float, torch.Tensor]:
    with autocast(batch.input.device, parts.precision):
        outputs = as_float32(parts.model(batch.input))
    loss = parts.loss(outputs, batch.target)
    highest = outputs[0] if isinstance(outputs, list | tuple) else outputs
    return float(loss), hard_counts(highest, batch.target, parts.loss.labels).cpu()


def epoch_record(
    ctx, parts, state, epoch, losses, val_loss, counts, lr, started, waited
) -> EpochRecord:
    device = next(parts.network.parameters()).device
    train_loss = ctx.mean_of(float(np.mean(losses)) if losses else float("nan"), device)
    dice: list[float | None] = []
    if val_loss is not None:
        val_loss = ctx.mean_of(val_loss, device)
        counts = ctx.sum(counts.to(device)).cpu()
        dice = nan_to_none(pseudo_dice(counts))
    mean_dice = mean_or_none(dice)
    state.ema_pseudo_dice = update_ema(state.ema_pseudo_dice, mean_dice)
    return EpochRecord(
        epoch=epoch,
        train_loss=train_loss,
        val_loss=val_loss,
        pseudo_dice=dice,
        mean_pseudo_dice=mean_dice,
        ema_pseudo_dice=state.ema_pseudo_dice,
        lr=lr,
        epoch_time_s=time.time() - started,
        data_wait_s=waited,
        train_iterations=len(losses),
        timestamp=time.time(),
        precision=parts.precision,
    )


def report(job: TrainingJob, parts: Parts, state: TrainingState, record: EpochRecord) -> None:
    """Rank 0 after each epoch: checkpoints (best when the EMA improved), log, plot."""
    improved = state.ema_pseudo_dice is not None and (
        state.best_ema_pseudo_dice is None or state.ema_pseudo_dice > state.best_ema_pseudo_dice
    )
    if improved:
        state.best_ema_pseudo_dice = state.ema_pseudo_dice
        save(job, parts, state, CHECKPOINT_BEST)
    save(job, parts, state, CHECKPOINT_LATEST)
    write_log(job.fold_dir / TRAINING_LOG, state.history)
    names = list(job.plans.label_model().names.values())  # foreground classes or regions
    plot_progress(job.fold_dir / PROGRESS_PLOT, state.history, names)
    parts.tracking.log_epoch(record, names)
    dice = ", ".join("-" if d is None else f"{d:.3f}" for d in record.pseudo_dice)
    val = "-" if record.val_loss is None else f"{record.val_loss:.4f}"
    info(
        f"epoch {record.epoch}: train loss {record.train_loss:.4f}, val loss {val}, pseudo-Dice [{dice}], "
        f"lr {record.lr:.5f}, {record.epoch_time_s:.1f} s (waiting for data {record.data_wait_s:.2f} s)"
    )


def save(job: TrainingJob, parts: Parts, state: TrainingState, name: str) -> None:
    checkpoint = build_checkpoint(
        parts.network.state_dict(),
        job.configuration.name,
        plans_configuration_dict(job.configuration),
        parts.optimizer.state_dict(),
        parts.scaler.state_dict() if parts.scaler is not None else None,
        state,
        job.run_settings,
    )
    save_checkpoint(job.fold_dir / name, checkpoint)


def restore(parts: Parts, path: Path, device: torch.device) -> TrainingState:
    checkpoint = load_checkpoint(path)
    parts.network.load_state_dict(checkpoint[KEY_NETWORK])
    parts.optimizer.load_state_dict(checkpoint[KEY_OPTIMIZER])
    if parts.scaler is not None and checkpoint.get(KEY_SCALER) is not None:
        parts.scaler.load_state_dict(checkpoint[KEY_SCALER])
    restore_rng_state(checkpoint[KEY_RNG])
    return training_state(checkpoint)


def build_parts(job: TrainingJob, ctx: DistContext, device: torch.device) -> Parts:
    cfg = job.configuration
    precision = resolve_precision(job.options.precision, device)
    network = build_network(job.plans, cfg, deep_supervision=True).to(device)
    model: nn.Module = network
    if job.options.compile:
        model = torch.compile(model)
    if ctx.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # the patch size never changes: pick the fastest kernels once
        )
    optimizer = make_optimizer(
        network.parameters(), job.options.schedule, fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    group = torch.distributed.group.WORLD if ctx.enabled else None
    loss = DeepSupervisionLoss(
        loss_scales(cfg),
        cfg.batch_dice,
        reduce_group=group,
        labels=job.plans.label_model(),
        join_unused=ctx.enabled,  # DDP needs a gradient for every parameter
    )
    train_maker, val_maker = batch_makers(job, ctx, device)
    return Parts(network, model, optimizer, scaler, loss, precision, train_maker, val_maker)


def batch_makers(
    job: TrainingJob, ctx: DistContext, device: torch.device, synchronize_timings: bool = False
):
    cfg = job.configuration
    rules = spatial_rules(cfg.patch_size)
    start, stop = batch_share(cfg.batch_size, ctx.world_size, ctx.rank)
    flags = foreground_flags(cfg.batch_size)[start:stop]

    def open_cases(names: list[str]) -> list[CaseData]:
        return [CaseData.open(job.data_folder, c, job.previous_folder) for c in names]

    labels = job.plans.label_model()
    fg = labels.foreground_values  # a cascade's one-hot channels: label values, also with regions
    masked = [i for i, n in enumerate(cfg.normalization) if n.use_nonzero_mask]
    cascade = job.previous_folder is not None
    train_sampler = PatchSampler(
        open_cases(job.split.train),
        rules.patch_size,
        rules.crop_size,
        flags,
        annotated_only=labels.has_ignore,
    )
    val_rules = SpatialRules(rules.patch_size, rules.patch_size, 0.0, (), (), (), rules.slice_stack)
    val_sampler = PatchSampler(
        open_cases(job.split.val),
        val_rules.patch_size,
        val_rules.crop_size,
        flags,
        annotated_only=labels.has_ignore,
    )
    cascade_augmentation = CascadeAugmentation() if cascade else None
    seed = job.seed
    train = BatchMaker(
        train_sampler,
        Augmenter(rules),
        device,
        seed,
        ctx.rank,
        fg,
        masked,
        cascade_augmentation,
        synchronize_timings,
    )
    val = BatchMaker(val_sampler, None, device, seed, ctx.rank, fg, [], None, synchronize_timings)
    return train, val
