"""The cross-over: the toolkit's trainer fed nnU-Net v2's training batches.

``bench/lockstep.py`` shows the training step is nnU-Net's, bit for bit, on the same batches
from the same weights; what is left between the two tools is the data pipeline (sampling,
augmentation). This trains the toolkit exactly as ``toolkit train`` does (its trainer, its
validation batches and pseudo-Dice per epoch, its checkpoints) except that every training
batch is one nnU-Net v2's own loader and augmentation made
(``bench/batch_stats_reference.py --dump``, in the reference's venv), read in order from
``.npy`` files. Against the plain toolkit run (its own batches) and nnU-Net's own run, with
the same plan, split, iterations and seed, this separates the pipeline from the step.
``bench/quality.py --crossover`` runs it as one of its arms.

    python -m bench.crossover dump --root NNUNET_ROOT --dataset-id 905 --count 500 --seed 0 \
        --prefix OUT/nnunet_batches_0
    python -m bench.crossover train --dataset-dir WS/Task905_DeepGrey --prefix OUT/nnunet_batches_0 \
        --epochs 10 --iterations 50 --seed 0 [--pretrained CHECKPOINT]

``--pretrained`` starts from given weights (``bench/twin.py --full-trainer`` gives it nnU-Net's
initial weights of the twins, so that ``toolkit train``'s whole loop retraces them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench import harness
from toolkit.training import trainer
from toolkit.training.loader import TRAIN, BatchKey, ReadyBatch
from toolkit.training.schedule import Schedule
from toolkit.training.stage import TrainOptions, train_fold
from toolkit.workspace import DatasetPaths

REFERENCE = harness.BENCH / "batch_stats_reference.py"


class DumpedBatches:
    """Training batches read in order from ``PREFIX_data.npy`` / ``PREFIX_target.npy``
    (batch ``epoch * iterations + iteration``); validation is not theirs to make."""

    def __init__(self, prefix: Path, iterations: int, device: torch.device):
        self.data = np.load(f"{prefix}_data.npy", mmap_mode="r")
        self.target = np.load(f"{prefix}_target.npy", mmap_mode="r")
        self.iterations = iterations
        self.device = device

    def __call__(self, key: BatchKey) -> ReadyBatch:
        if key.phase != TRAIN:
            raise ValueError("dumped batches are training batches")
        index = key.epoch * self.iterations + key.iteration
        if index >= len(self.data):
            raise ValueError(f"batch {index} asked for, {len(self.data)} dumped")
        image = torch.from_numpy(np.array(self.data[index], dtype=np.float32)).to(self.device)
        target = torch.from_numpy(np.array(self.target[index], dtype=np.int64)).to(self.device)
        return ReadyBatch(key, image, target, [])


def dump(root: Path, dataset_id: int, count: int, seed: int, prefix: Path) -> None:
    """nnU-Net's first ``count`` training batches of fold 0 (its loader, its augmentation)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    command = [str(harness.ensure_nnunet()), str(REFERENCE), "--root", str(root)]
    command += ["--dataset-id", str(dataset_id), "--batches", str(count), "--seed", str(seed)]
    command += ["--dump", str(prefix), "--dump-count", str(count)]
    command += ["--out", f"{prefix}_stats.json"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"nnU-Net's batches failed:\n{done.stderr[-3000:]}")


def train(dataset_dir: Path, prefix: Path, args: argparse.Namespace) -> None:
    """``toolkit train DATASET 3d_fullres 0`` with nnU-Net's batches for training."""
    original = trainer.batch_makers

    def makers(job, ctx, device, synchronize_timings=False):
        _, validation = original(job, ctx, device, synchronize_timings)
        return DumpedBatches(prefix, job.options.schedule.iterations_per_epoch, device), validation

    trainer.batch_makers = makers
    schedule = Schedule(
        epochs=args.epochs,
        iterations_per_epoch=args.iterations,
        validation_iterations=max(1, args.iterations // 5),
    )
    options = TrainOptions(
        schedule=schedule,
        device="cpu",
        precision=args.precision,
        seed=args.seed,
        validate=False,
        quiet=True,
        pretrained=str(args.pretrained) if args.pretrained is not None else None,
    )
    train_fold(DatasetPaths(dataset_dir), "3d_fullres", 0, options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="nnU-Net's training batches, to .npy files")
    d.add_argument("--root", type=Path, required=True)
    d.add_argument("--dataset-id", type=int, required=True)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prefix", type=Path, required=True)
    t = sub.add_parser("train", help="the toolkit's trainer on dumped batches")
    t.add_argument("--dataset-dir", type=Path, required=True)
    t.add_argument("--prefix", type=Path, required=True)
    t.add_argument("--epochs", type=int, required=True)
    t.add_argument("--iterations", type=int, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", default="fp32")
    t.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="initial weights (a checkpoint, ours or nnU-Net's), as `toolkit train --pretrained`",
    )
    args = parser.parse_args(argv)
    if args.command == "dump":
        dump(args.root, args.dataset_id, args.count, args.seed, args.prefix)
    else:
        train(args.dataset_dir, args.prefix, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
