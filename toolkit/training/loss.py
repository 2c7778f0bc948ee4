"""Soft Dice + cross-entropy over the deep-supervision outputs, and the online pseudo-Dice.

As in the reference implementation (nnU-Net v2's ``DC_and_CE_loss`` and ``DC_and_BCE_loss``):

* classes: Dice on softmax probabilities without the background channel, smooth 1e-5,
  averaged over classes (and over samples unless the plan asks for batch Dice, which pools
  the whole batch per class), and cross-entropy;
* regions (:class:`~toolkit.core.labels.LabelModel` with regions): one sigmoid per region,
  Dice over every region (no background channel to drop) and binary cross-entropy;
* the ignore label: voxels holding it count nowhere. Dice sums run over annotated voxels
  only; cross-entropy is the mean over annotated voxels (0 when a batch has none); binary
  cross-entropy is summed over regions and annotated voxels and divided by the number of
  annotated voxels, exactly as the reference does.

The loss is ``CE - Dice`` (weights 1:1), so values below zero are normal. Deep-supervision
outputs get weights halving with each coarser resolution, the coarsest weight 0, normalised
to sum 1; their targets are the label maps downsampled by nearest neighbour to each
output's scale (then turned into regions and the annotated mask, which commutes with
nearest-neighbour downsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F

from toolkit.core.labels import LabelModel, annotated_batch, region_batch
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
    return masked_soft_dice(probs, onehot, None, batch_dice, reduce_group)


def dice_ce(
    logits: torch.Tensor, target: torch.Tensor, batch_dice: bool, reduce_group=None
) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target[:, 0])
    return ce - soft_dice(logits, target, batch_dice, reduce_group)


def masked_soft_dice(
    probabilities: torch.Tensor,
    reference: torch.Tensor,
    mask: torch.Tensor | None,
    batch_dice: bool,
    reduce_group=None,
) -> torch.Tensor:
    """Mean soft Dice over channels of ``probabilities`` against ``reference`` (same shape,
    0/1), the sums taken over voxels where ``mask`` ``(B, 1, *spatial)`` is true (all when None)."""
    axes = tuple(range(2, probabilities.dim()))
    if batch_dice:
        axes = (0, *axes)
    if mask is not None:
        weight = mask.to(probabilities.dtype)
        intersection = (probabilities * reference * weight).sum(axes)
        predicted = (probabilities * weight).sum(axes)
        referenced = (reference * weight).sum(axes)
    else:
        intersection = (probabilities * reference).sum(axes)
        predicted = probabilities.sum(axes)
        referenced = reference.sum(axes)
    if batch_dice and reduce_group is not None:
        intersection = dist_fn.all_reduce(intersection, group=reduce_group)
        predicted = dist_fn.all_reduce(predicted, group=reduce_group)
        referenced = dist_fn.all_reduce(referenced, group=reduce_group)
    dice = (2 * intersection + DICE_SMOOTH) / (predicted + referenced + DICE_SMOOTH).clamp_min(1e-8)
    return dice.mean()


def region_dice_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: LabelModel,
    batch_dice: bool,
    reduce_group=None,
) -> torch.Tensor:
    """BCE - soft Dice over one sigmoid per region; ``target`` ``(B, 1, *spatial)`` label values."""
    logits = logits.float()
    regions = region_batch(target, labels).to(logits.dtype)
    mask = annotated_batch(target, labels)
    dice = masked_soft_dice(torch.sigmoid(logits), regions, mask, batch_dice, reduce_group)
    if mask is None:
        bce = F.binary_cross_entropy_with_logits(logits, regions)
    else:
        weight = mask.to(logits.dtype)
        per_voxel = F.binary_cross_entropy_with_logits(logits, regions, reduction="none")
        bce = (per_voxel * weight).sum() / weight.sum().clamp_min(1e-8)
    return bce - dice


def masked_dice_ce(
    logits: torch.Tensor, target: torch.Tensor, ignore: int, batch_dice: bool, reduce_group=None
) -> torch.Tensor:
    """CE - soft Dice over classes, voxels holding ``ignore`` left out of both."""
    logits = logits.float()
    mask = target != ignore
    cleaned = torch.where(mask, target, torch.zeros_like(target))
    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    onehot = torch.zeros_like(logits).scatter_(1, cleaned, 1.0)[:, 1:]
    dice = masked_soft_dice(probabilities, onehot, mask, batch_dice, reduce_group)
    if bool(mask.any()):
        ce = F.cross_entropy(logits, target[:, 0], ignore_index=ignore)
    else:
        ce = logits.new_zeros(()) + 0.0 * logits.sum()  # nothing annotated: no CE, graph kept
    return ce - dice


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    labels: LabelModel | None,
    batch_dice: bool,
    reduce_group=None,
) -> torch.Tensor:
    """The loss of one output for the dataset's labels (classes when ``labels`` is None)."""
    if labels is not None and labels.has_regions:
        return region_dice_bce(logits, target, labels, batch_dice, reduce_group)
    if labels is not None and labels.ignore is not None:
        return masked_dice_ce(logits, target, labels.ignore, batch_dice, reduce_group)
    return dice_ce(logits, target, batch_dice, reduce_group)


class DeepSupervisionLoss:
    """Weighted Dice + CE (BCE for regions) over the network's outputs (highest resolution first).

    An output weighted 0 (the coarsest) is left out, as the reference leaves it out: its head
    then gets no gradient at all, so the optimiser leaves it alone (no weight decay, no
    momentum), exactly as nnU-Net v2's (``bench/lockstep.py``). With ``join_unused`` it is
    joined to the graph with weight 0 instead, so that every parameter receives a (zero)
    gradient, which distributed training requires.
    """

    def __init__(
        self,
        scales: Sequence[Sequence[float]],
        batch_dice: bool,
        reduce_group=None,
        labels: LabelModel | None = None,
        *,
        join_unused: bool = False,
    ):
        if not scales:
            raise ValueError("deep supervision needs at least one scale")
        self.scales = [list(s) for s in scales]
        self.weights = deep_supervision_weights(len(self.scales))
        self.batch_dice = batch_dice
        self.reduce_group = reduce_group
        self.labels = labels
        self.join_unused = join_unused

    def one(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits, target, self.labels, self.batch_dice, self.reduce_group)

    def targets(self, target: torch.Tensor) -> list[torch.Tensor]:
        return downsample_target(target, self.scales)

    def __call__(
        self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.one(outputs, target)
        targets = self.targets(target)
        if len(targets) != len(outputs):
            raise ValueError(
                f"{len(outputs)} network outputs but {len(targets)} deep-supervision scales in the plan"
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, out, tgt in zip(self.weights, outputs, targets, strict=True):
            if weight == 0.0:
                if self.join_unused:  # not computed; every parameter gets a (zero) gradient
                    total = total + 0.0 * out.float().sum()
                continue
            total = total + weight * self.one(out, tgt)
        return total


def hard_counts(
    logits: torch.Tensor, target: torch.Tensor, labels: LabelModel | None = None
) -> torch.Tensor:
    """Per foreground class ``(tp, fp, fn)`` of the argmax prediction, shape ``(3, K-1)``; with
    regions, per region of the prediction ``sigmoid > 0.5``, shape ``(3, R)``. Voxels holding
    the ignore label count nowhere."""
    mask = (
        annotated_batch(target, labels)[:, 0] if labels is not None and labels.has_ignore else None
    )
    if labels is not None and labels.has_regions:
        predicted = logits > 0  # sigmoid(x) > 0.5
        reference = region_batch(target, labels)
        pairs = [(predicted[:, r], reference[:, r]) for r in range(logits.shape[1])]
    else:
        pred, tgt = logits.argmax(1), target[:, 0]
        pairs = [(pred == c, tgt == c) for c in range(1, logits.shape[1])]
    counts = []
    for p, t in pairs:
        if mask is not None:
            p, t = p & mask, t & mask
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
