"""The per-epoch record: ``log.jsonl`` (one JSON object per epoch) and ``progress.png``.

The pseudo-Dice is the reference's online estimate: Dice per foreground class of the
argmax prediction, summed over the validation patches of the epoch (not whole cases). Its
exponential moving average (``ema = 0.9 * ema + 0.1 * mean``) picks the best checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit.io.atomic import write_text, write_with

EMA_DECAY = 0.9


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None
    pseudo_dice: list[float | None]  # per foreground class
    mean_pseudo_dice: float | None
    ema_pseudo_dice: float | None
    lr: float
    epoch_time_s: float
    data_wait_s: float  # time the loop waited for batches
    train_iterations: int
    timestamp: float
    precision: str | None = None  # what the network ran under (fp32, bf16, fp16)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> EpochRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def update_ema(previous: float | None, value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return previous
    return value if previous is None else EMA_DECAY * previous + (1 - EMA_DECAY) * value


def nan_to_none(values: list[float]) -> list[float | None]:
    return [None if (v is None or math.isnan(v)) else float(v) for v in values]


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def write_log(path: Path, history: list[dict]) -> None:
    """The whole log, rewritten atomically (it is small): never a half-written line."""
    write_text(path, "".join(json.dumps(record, allow_nan=False) + "\n" for record in history))


def read_log(path: Path) -> list[EpochRecord]:
    """The epochs logged so far; none when there is no log yet. Lines that do not parse (a
    log copied while being replaced) are skipped: the log is a progress view, not a contract."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(EpochRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return records


def plot_progress(path: Path, history: list[dict], class_names: list[str]) -> None:
    # imported here: choosing the Agg backend is process-wide state, set only when a plot is
    # drawn (and pyplot is a slow import that inference and the CLI need not pay)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [EpochRecord.from_dict(r) for r in history]
    epochs = [r.epoch for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    ax = axes[0]
    ax.plot(epochs, [r.train_loss for r in records], label="train loss", color="tab:blue")
    ax.plot(
        epochs,
        [r.val_loss if r.val_loss is not None else math.nan for r in records],
        label="validation loss",
        color="tab:red",
    )
    ax.set_ylabel("loss (CE - Dice)")
    ax.legend(loc="upper left")
    dice_ax = ax.twinx()
    dice_ax.plot(
        epochs,
        [_nan(r.mean_pseudo_dice) for r in records],
        ":",
        color="tab:green",
        label="pseudo-Dice",
    )
    dice_ax.plot(
        epochs,
        [_nan(r.ema_pseudo_dice) for r in records],
        "-",
        color="tab:green",
        label="pseudo-Dice (EMA)",
    )
    for k, name in enumerate(class_names):
        dice_ax.plot(
            epochs,
            [_nan(r.pseudo_dice[k]) if k < len(r.pseudo_dice) else math.nan for r in records],
            "--",
            linewidth=0.8,
            label=name,
        )
    dice_ax.set_ylabel("pseudo-Dice")
    dice_ax.set_ylim(0, 1)
    dice_ax.legend(loc="upper right", fontsize="small")
    axes[1].plot(epochs, [r.epoch_time_s for r in records], label="epoch time")
    axes[1].plot(epochs, [r.data_wait_s for r in records], label="waiting for data")
    axes[1].set_ylabel("seconds")
    axes[1].legend()
    axes[2].plot(epochs, [r.lr for r in records])
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def as_dict(record: EpochRecord) -> dict:
    return asdict(record)
