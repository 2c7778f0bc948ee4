"""Time nnU-Net v2's training iterations through its own trainer (run by ``bench/train.py``).

Runs with the Python that holds ``nnunetv2`` (``bench/.venv-nnunet``, or the GPU machine's
with carried wheels), never with the project's. Uses the reference's ``nnUNetTrainer`` as
``nnUNetv2_train`` does (its data loader, its augmentation in ``nnUNet_n_proc_DA``
background processes, or in the main process when 0, its ``train_step``), and times each
iteration: the wait for the next batch, and the step (forward, backward, optimiser; the
step returns the loss to the CPU, which synchronises a GPU). Prints one JSON line.

    python bench/nnunet_train_steps.py --root DIR --dataset-id 990 --configuration 3d_fullres \
        --iterations 10 --warmup 2 --device cpu --workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset-id", type=int, required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="nnUNet_n_proc_DA: 0 = augmentation in the main process",
    )
    parser.add_argument(
        "--compile", action="store_true", help="nnUNet_compile=true (its default on CUDA)"
    )
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(root / name)
    os.environ["nnUNet_n_proc_DA"] = str(args.workers)
    os.environ["nnUNet_compile"] = "true" if args.compile else "false"

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    device = torch.device(args.device)
    if device.type == "cuda":
        # what nnUNetv2_train does before it builds the trainer
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    trainer = get_trainer_from_args(
        str(args.dataset_id),
        args.configuration,
        args.fold,
        plans_identifier=args.plans,
        device=device,
    )
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = args.warmup + args.iterations
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    waits, steps = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = None
    for i in range(args.warmup + args.iterations):
        if i == args.warmup:
            start = time.perf_counter()
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train)
        t1 = time.perf_counter()
        trainer.train_step(batch)  # returns the loss as numpy: synchronises
        t2 = time.perf_counter()
        if i >= args.warmup:
            waits.append(t1 - t0)
            steps.append(t2 - t1)
    total = time.perf_counter() - start
    config = trainer.configuration_manager
    result = {
        "tool": "nnU-Net v2",
        "device": str(device),
        "precision": "fp16 autocast" if device.type == "cuda" else "fp32",
        "augmentation_workers": args.workers,
        "compiled": args.compile,
        "patch_size": list(config.patch_size),
        "batch_size": trainer.batch_size,
        "iterations": args.iterations,
        "iterations_per_s": args.iterations / total,
        "seconds_per_iteration": statistics.median(
            [w + s for w, s in zip(waits, steps, strict=True)]
        ),
        "data_wait_s": statistics.median(waits),
        "step_s": statistics.median(steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "parameters": sum(p.numel() for p in trainer.network.parameters()),
        "torch": torch.__version__,
    }
    trainer.on_train_end()
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the reference's background augmenters can keep a plain exit waiting
