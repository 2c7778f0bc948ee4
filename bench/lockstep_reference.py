"""nnU-Net v2's half of the lockstep (``bench/lockstep.py``): its own trainer's steps on given
batches from given weights.

Runs with the Python that holds ``nnunetv2`` (``$TOOLKIT_NNUNET_PYTHON`` or
``bench/.venv-nnunet``), never with the project's. Builds ``nnUNetTrainer`` from the plans
and dataset.json it is given, on the CPU, and takes its parts from the trainer's own methods
(``build_network_architecture`` with its He initialisation, ``configure_optimizers``: SGD and
``PolyLRScheduler``, ``_build_loss``: ``DC_and_CE_loss`` under ``DeepSupervisionWrapper``).
Every epoch starts with the trainer's ``on_train_epoch_start`` (the scheduler's step); every
step is the trainer's ``train_step`` on a batch read from the ``.npz`` (its targets
downsampled by batchgeneratorsv2's ``DownsampleSegForDSTransform`` per sample, as its data
pipeline does). Also measures the first step by parts: the outputs, the loss and the
gradients of the initial network on the first batch, and the gradient norm before clipping
at every step (``--scale-heads`` enlarges the initial heads, so that clipping acts). Writes everything into ``--out``
(``.npz``); prints ``RESULT {json}``.

    python bench/lockstep_reference.py --plans P --dataset D --batches B --out O \
        --epochs 20 --iterations 10 --seed 0 [--scale-heads 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batches", required=True, help="an .npz, or the prefix of dumped .npy")
    parser.add_argument("--out", required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--scale-heads",
        type=float,
        default=1.0,
        help="multiply the initial segmentation heads' weights (large gradients: clipping acts)",
    )
    args = parser.parse_args(argv)

    folders = tempfile.mkdtemp(prefix="lockstep-nnunet-")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = os.path.join(folders, name)
    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    with open(args.plans) as f:
        plans = json.load(f)
    with open(args.dataset) as f:
        dataset = json.load(f)
    plans.setdefault("continue_training", False)  # 2.8's trainer pops this key
    trainer = nnUNetTrainer(plans, args.configuration, 0, dataset, device=torch.device("cpu"))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.batch_size = trainer.configuration_manager.batch_size
    channels = determine_num_input_channels(
        trainer.plans_manager, trainer.configuration_manager, dataset
    )
    torch.manual_seed(args.seed)
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    )
    with torch.no_grad():
        for head in trainer.network.decoder.seg_layers:
            head.weight.mul_(args.scale_heads)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True
    scales = trainer._get_deep_supervision_scales()
    downsample = DownsampleSegForDSTransform(ds_scales=scales)

    if args.batches.endswith(".npz"):
        batches = np.load(args.batches)
        images, labels = batches["data"], batches["target"]
    else:  # PREFIX_data.npy / PREFIX_target.npy, as bench/batch_stats_reference.py dumps them
        images = np.load(f"{args.batches}_data.npy", mmap_mode="r")
        labels = np.load(f"{args.batches}_target.npy", mmap_mode="r")

    def batch(k: int) -> dict:
        seg = torch.from_numpy(np.array(labels[k % len(labels)]))
        per_sample = [downsample(segmentation=s)["segmentation"] for s in seg]
        targets = [torch.stack([p[i] for p in per_sample]) for i in range(len(scales))]
        return {"data": torch.from_numpy(np.array(images[k % len(images)])), "target": targets}

    def weights(prefix: str) -> dict:
        return {
            f"{prefix}:{k}": v.detach().cpu().numpy().copy()
            for k, v in trainer.network.state_dict().items()
        }

    out = weights("initial")
    # the first step by parts, from the initial weights (no side effects: instance norm keeps
    # no running statistics; the gradients are cleared by train_step's zero_grad)
    first = batch(0)
    trainer.network.train()
    outputs = trainer.network(first["data"])
    loss = trainer.loss(outputs, first["target"])
    loss.backward()
    grad_norm = float(
        torch.linalg.vector_norm(
            torch.stack(
                [
                    torch.linalg.vector_norm(p.grad)
                    for p in trainer.network.parameters()
                    if p.grad is not None
                ]
            )
        )
    )
    for i, o in enumerate(outputs):
        out[f"first_output:{i}"] = o.detach().numpy()
    out["first_loss"] = np.array(float(loss.detach()))
    for name, p in trainer.network.named_parameters():
        if p.grad is not None:
            out[f"first_grad:{name}"] = p.grad.detach().numpy().copy()
    trainer.optimizer.zero_grad(set_to_none=True)

    # the gradient norm before clipping, as the trainer's own clip_grad_norm_ call returns it
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *a, **k):
        norm = clip(parameters, max_norm, *a, **k)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip
    losses, lrs = [], []
    step = 0
    started = time.perf_counter()
    for epoch in range(args.epochs):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        lrs.append(float(trainer.optimizer.param_groups[0]["lr"]))
        for _ in range(args.iterations):
            result = trainer.train_step(batch(step))
            losses.append(float(result["loss"]))
            step += 1
            if step == 1:
                out.update(weights("after_first"))
    seconds = time.perf_counter() - started
    out.update(weights("final"))
    out["losses"] = np.array(losses, dtype=np.float64)
    out["lrs"] = np.array(lrs, dtype=np.float64)
    out["grad_norms"] = np.array(norms, dtype=np.float64)
    np.savez(args.out, **out)
    import importlib.metadata as metadata

    return {
        "steps": step,
        "seconds": seconds,
        "first_grad_norm": grad_norm,
        "torch": torch.__version__,
        "nnunetv2": metadata.version("nnunetv2"),
        "deep_supervision_scales": [list(map(float, s)) for s in scales],
        "loss_weights": [float(w) for w in trainer.loss.weight_factors],
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1:])), flush=True)
    sys.stdout.flush()
    os._exit(0)
