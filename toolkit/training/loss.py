"""Soft Dice + cross-entropy over the deep-supervision outputs, and the online pseudo-Dice.

As in the reference implementation: Dice on softmax probabilities without the background
channel, smooth 1e-5, averaged over classes (and over samples unless the plan asks for
batch Dice, which pools the whole batch per class); the loss is ``CE - Dice`` (weights
1:1), so values below zero are normal. Deep-supervision outputs get weights halving with
each coarser resolution, the coarsest weight 0, normalised to sum 1; their targets are the
labels downsampled by nearest neighbour to each output's scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

from toolkit.core.plans import Configuration
from toolkit.core.plans import deep_supervision_scales as plan_scales

DICE_SMOOTH = 1e-5


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """1, 1/2, 1/4, ... with the last (coarsest) output weighted 0, normalised."""
    weights = [1 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def loss_scales(configuration: Configuration) -> list[list[float]]:
    """The plan's scales, else the reference's rule: 1 / cumulative strides, all but the last."""
    if configuration.deep_supervision_scales:
        return [list(map(float, s)) for s in configuration.deep_supervision_scales]
    return plan_scales(configuration.architecture.strides)


def downsample_target(
    target: torch.Tensor, scales: Sequence[Sequence[float]]
) -> list[torch.Tensor]:
    """Target ``(B, 1, *spatial)`` at every deep-supervision scale, nearest neighbour."""
    out = []
    spatial = target.shape[2:]
    for scale in scales:
        size = [round(s * f) for s, f in zip(spatial, scale, strict=True)]
        if list(size) == list(spatial):
            out.append(target)
        else:
            out.append(F.interpolate(target.float(), size=size, mode="nearest-exact").long())
    return out


def soft_dice(
    logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, reduce_group=None
) -> torch.Tensor:
    """Mean soft Dice over foreground classes. ``target`` is ``(B, 1, *spatial)`` int64.

    With ``reduce_group`` (distributed batch Dice) the per-class sums are added over all
    processes, differentiably, so every process optimises the Dice of the global batch.
    """
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = torch.zeros_like(logits, dtype=probs.dtype).scatter_(1, target, 1.0)[:, 1:]
    axes = tuple(range(2, logits.dim()))
    if batch_dice:
        axes = (0, *axes)
    intersection = (probs * onehot).sum(axes)
    predicted = probs.sum(axes)
    reference = onehot.sum(axes)
    if batch_dice and reduce_group is not None:
        intersection = dist_fn.all_reduce(intersection, group=reduce_group)
        predicted = dist_fn.all_reduce(predicted, group=reduce_group)
        reference = dist_fn.all_reduce(reference, group=reduce_group)
    dice = (2 * intersection + DICE_SMOOTH) / (predicted + reference + DICE_SMOOTH).clamp_min(1e-8)
    return dice.mean()


def dice_ce(
    logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, reduce_group=None
) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target[:, 0])
    return ce - soft_dice(logits, target, batch_dice, reduce_group)


class DeepSupervisionLoss:
    """Weighted Dice + CE over the network's outputs (highest resolution first)."""

    def __init__(self, scales: Sequence[Sequence[float]], batch_dice: bool, reduce_group=None):
        if not scales:
            raise ValueError("deep supervision needs at least one scale")
        self.scales = [list(s) for s in scales]
        self.weights = deep_supervision_weights(len(self.scales))
        self.batch_dice = batch_dice
        self.reduce_group = reduce_group

    def targets(self, target: torch.Tensor) -> list[torch.Tensor]:
        return downsample_target(target, self.scales)

    def __call__(
        self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return dice_ce(outputs, target, self.batch_dice, self.reduce_group)
        targets = self.targets(target)
        if len(targets) != len(outputs):
            raise ValueError(
                f"{len(outputs)} network outputs but {len(targets)} deep-supervision scales in the plan"
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, out, tgt in zip(self.weights, outputs, targets, strict=True):
            if weight == 0.0:
                # not computed, but joined to the graph so that every parameter receives a
                # (zero) gradient, which distributed training requires
                total = total + 0.0 * out.float().sum()
                continue
            total = total + weight * dice_ce(out, tgt, self.batch_dice, self.reduce_group)
        return total


def hard_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per foreground class ``(tp, fp, fn)`` of the argmax prediction, shape ``(3, K-1)``."""
    num_classes = logits.shape[1]
    pred = logits.argmax(1)
    tgt = target[:, 0]
    counts = []
    for c in range(1, num_classes):
        p, t = pred == c, tgt == c
        counts.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    if not counts:
        return torch.zeros((3, 0), dtype=torch.long, device=logits.device)
    return torch.stack(counts, dim=1)


def pseudo_dice(counts: torch.Tensor) -> list[float]:
    """Dice per foreground class from summed ``(tp, fp, fn)``; NaN where a class never occurs."""
    tp, fp, fn = (counts[i].double() for i in range(3))
    denom = 2 * tp + fp + fn
    dice = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))
    return [float(v) for v in dice]
