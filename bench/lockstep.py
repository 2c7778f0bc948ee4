"""Lockstep with nnU-Net v2: the same steps from the same weights on the same batches.

The toolkit's training step (:func:`toolkit.training.trainer.train_step`: its network, its
deep-supervision Dice + cross-entropy with the plan's batch Dice, SGD with Nesterov momentum,
the poly schedule set per epoch, gradient clipping at 12) against nnU-Net v2's own
``nnUNetTrainer.train_step`` (``bench/lockstep_reference.py``, in the reference's venv), in
fp32 on the CPU, one thread, deterministic algorithms:

1. a small plan in nnU-Net v2's format (read by the toolkit through its converter,
   :func:`toolkit.nets.nnunet_v2.convert_plans`) and synthetic batches (ellipsoids of two
   classes in noise) written once to an ``.npz`` read by both;
2. nnU-Net builds and initialises its network (its He initialisation, seeded), trains, and
   saves its initial weights, its weights after the first step and at the end, its loss at
   every step, and the first step by parts (outputs, loss, gradients);
3. the toolkit loads the same initial weights (renamed by
   :func:`toolkit.nets.nnunet_v2_weights.convert_state_dict`) and takes the same steps.

Compared: the first step by parts (network outputs, the loss of the reference's outputs,
gradients, weights after one update), the loss at every step (the first step where the two
differ by more than the tolerance) and the final weights.

    python -m bench.lockstep [--epochs 30] [--iterations 10] [--batch-dice/--no-batch-dice]

writes ``bench/results/lockstep.{json,md}``. ``tests/training/test_lockstep.py`` runs a
shorter one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit.nets.nnunet_v2 import convert_plans
from toolkit.nets.nnunet_v2_weights import convert_state_dict
from toolkit.nets.unet import build_network
from toolkit.training.loader import TRAIN, BatchKey, ReadyBatch
from toolkit.training.loss import DeepSupervisionLoss, loss_scales
from toolkit.training.schedule import Schedule, make_optimizer, set_lr
from toolkit.training.trainer import Parts, train_step

IS_BENCHMARK = True  # run by `make bench` (python -m bench)
BENCH = Path(__file__).resolve().parent
REFERENCE = BENCH / "lockstep_reference.py"
CONFIGURATION = "3d_fullres"
PATCH = (16, 16, 24)
BATCH_SIZE = 2
# float32 tolerances: relative to the loss, and to the largest weight of each tensor
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4
GRAD_CLIP = Schedule().grad_clip
# the smallest magnitude a difference is taken relative to: the conv biases before instance
# norm get only rounding noise as gradients (the norm subtracts them) and stay near 1e-8
SCALE_FLOOR = 1e-2


def reference_python() -> Path:
    """``$TOOLKIT_NNUNET_PYTHON``, else the bench venv's Python."""
    default = BENCH / ".venv-nnunet" / "bin" / "python"
    return Path(os.environ.get("TOOLKIT_NNUNET_PYTHON", default))


def nnunet_plans(batch_dice: bool) -> dict:
    """A small 4-stage ``PlainConvUNet`` plan in nnU-Net v2's format: three deep-supervision
    outputs (weights 2/3, 1/3, 0), anisotropic strides so that their scales differ per axis."""
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4,
            "features_per_stage": [4, 8, 16, 32],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2, 2],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset991_Lockstep",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 48],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": BATCH_SIZE,
                "patch_size": list(PATCH),
                "median_image_size_in_voxels": [32.0, 32.0, 48.0],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": arch,
                "batch_dice": batch_dice,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


DATASET_JSON = {
    "channel_names": {"0": "MRI"},
    "labels": {"background": 0, "a": 1, "b": 2},
    "numTraining": 1,
    "file_ending": ".nii.gz",
}


def make_batches(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` batches: images ``(count, B, 1, *PATCH)`` float32 and labels ``(count, B, 1,
    *PATCH)`` int16; each sample holds an ellipsoid of class 1 and one of class 2 (brighter),
    at random places and sizes, in Gaussian noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in PATCH], indexing="ij"), -1)
    images = np.empty((count, BATCH_SIZE, 1, *PATCH), np.float32)
    labels = np.zeros((count, BATCH_SIZE, 1, *PATCH), np.int16)
    for k in range(count):
        for b in range(BATCH_SIZE):
            seg = np.zeros(PATCH, np.int16)
            for value in (1, 2):
                centre = rng.uniform(0.2, 0.8, 3) * np.array(PATCH)
                radii = rng.uniform(2.0, 5.0, 3)
                inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
                seg[inside] = value
            labels[k, b, 0] = seg
            images[k, b, 0] = seg * 1.0 + rng.normal(0, 0.6, PATCH)
    return images, labels


@dataclass
class ToolkitRun:
    losses: list[float]
    lrs: list[float]
    first_outputs: list[np.ndarray]
    first_loss: float
    loss_of_reference_outputs: float
    first_grads: dict[str, np.ndarray]
    first_grad_norm: float
    after_first: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    grad_norms: list[float]


def prefixed(arrays, prefix: str) -> dict[str, torch.Tensor]:
    return {
        k[len(prefix) + 1 :]: torch.from_numpy(np.asarray(arrays[k]))
        for k in arrays.files
        if k.startswith(prefix + ":")
    }


def numpy_state(network: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in network.state_dict().items()}


def run_toolkit(
    plans_dict: dict,
    images: np.ndarray,
    labels: np.ndarray,
    reference,
    epochs: int,
    iterations: int,
    dataset_json: dict | None = None,
) -> ToolkitRun:
    """The toolkit's steps from the reference's initial weights, on the same batches."""
    plans = convert_plans(plans_dict, dataset_json or DATASET_JSON)
    cfg = plans.configuration(CONFIGURATION)
    network = build_network(plans, cfg, deep_supervision=True)
    network.load_state_dict(convert_state_dict(prefixed(reference, "initial")), strict=True)
    schedule = Schedule(epochs=epochs, iterations_per_epoch=iterations, validation_iterations=0)
    optimizer = make_optimizer(network.parameters(), schedule)
    loss = DeepSupervisionLoss(loss_scales(cfg), cfg.batch_dice, labels=plans.label_model())
    parts = Parts(network, network, optimizer, None, loss, "fp32", None, None)  # type: ignore[arg-type]

    def batch(k: int, epoch: int = 0) -> ReadyBatch:
        i = k % len(images)
        return ReadyBatch(
            BatchKey(epoch, TRAIN, k),
            torch.from_numpy(np.array(images[i], dtype=np.float32)),
            torch.from_numpy(np.array(labels[i], dtype=np.int64)),
            [],
        )

    # the first step by parts
    network.train()
    first = batch(0)
    outputs = network(first.input)
    value = loss(outputs, first.target)
    value.backward()
    grads = {
        n: p.grad.detach().numpy().copy()
        for n, p in network.named_parameters()
        if p.grad is not None  # the head of the output weighted 0 gets none
    }
    grad_norm = float(
        torch.linalg.vector_norm(
            torch.stack(
                [torch.linalg.vector_norm(g) for g in map(torch.from_numpy, grads.values())]
            )
        )
    )
    optimizer.zero_grad(set_to_none=True)
    count = len([k for k in reference.files if k.startswith("first_output:")])
    theirs = [torch.from_numpy(reference[f"first_output:{i}"]) for i in range(count)]
    of_reference = float(loss(theirs, first.target))

    losses, lrs, after_first = [], [], {}
    # the gradient norm before clipping, as the trainer's clip_grad_norm_ call returns it
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *a, **k):
        norm = clip(parameters, max_norm, *a, **k)
        norms.append(float(norm))
        return norm

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        _train(parts, schedule, optimizer, batch, losses, lrs, after_first)
    finally:
        torch.nn.utils.clip_grad_norm_ = clip
    return ToolkitRun(
        losses,
        lrs,
        [o.detach().numpy() for o in outputs],
        float(value.detach()),
        of_reference,
        grads,
        grad_norm,
        after_first,
        numpy_state(network),
        norms,
    )


def _train(parts, schedule, optimizer, batch, losses, lrs, after_first) -> None:
    """The epochs as the trainer runs them: the learning rate set per epoch, then the steps."""
    network, epochs, iterations = parts.network, schedule.epochs, schedule.iterations_per_epoch
    step = 0
    for epoch in range(epochs):
        lr = schedule.lr(epoch)
        set_lr(optimizer, lr)
        lrs.append(lr)
        network.train()
        for _ in range(iterations):
            losses.append(train_step(parts, batch(step, epoch), schedule.grad_clip))
            step += 1
            if step == 1:
                after_first.update(numpy_state(network))


def max_relative(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> tuple[float, str]:
    """The largest difference of a tensor relative to that tensor's largest magnitude (at
    least :data:`SCALE_FLOOR`), and the tensor's name."""
    worst, name = 0.0, ""
    for key, value in ours.items():
        other = theirs[key]
        scale = max(float(np.abs(other).max()), SCALE_FLOOR)
        d = float(np.abs(value - other).max()) / scale
        if d > worst:
            worst, name = d, key
    return worst, name


def _buffers(state: dict) -> set[str]:
    return {k for k in state if not (k.endswith(".weight") or k.endswith(".bias"))}


def compare(run: ToolkitRun, reference, reference_info: dict) -> dict:
    theirs = {
        name: {k: v.numpy() for k, v in convert_state_dict(prefixed(reference, name)).items()}
        for name in ("after_first", "final")
    }
    grads = {k: v.numpy() for k, v in convert_state_dict(prefixed(reference, "first_grad")).items()}
    outputs = [
        float(np.abs(o - reference[f"first_output:{i}"]).max() / np.abs(o).max())
        for i, o in enumerate(run.first_outputs)
    ]
    ref_losses = np.asarray(reference["losses"])
    ours = np.asarray(run.losses)
    difference = np.abs(ours - ref_losses) / np.maximum(np.abs(ref_losses), 1.0)
    over = np.flatnonzero(difference > LOSS_TOLERANCE)
    norms_differ = np.flatnonzero(np.asarray(run.grad_norms) != np.asarray(reference["grad_norms"]))
    grad_rel, grad_at = max_relative(grads, run.first_grads)
    without_gradient = sorted(set(run.final) - set(run.first_grads) - _buffers(run.final))
    reference_without = sorted(set(run.final) - set(grads) - _buffers(run.final))
    after_rel, after_at = max_relative(run.after_first, theirs["after_first"])
    final_rel, final_at = max_relative(run.final, theirs["final"])
    return {
        "steps": len(run.losses),
        "first_step": {
            "outputs_max_relative_difference": outputs,
            "loss_toolkit": run.first_loss,
            "loss_reference": float(reference["first_loss"]),
            "toolkit_loss_of_reference_outputs": run.loss_of_reference_outputs,
            "gradient_max_relative_difference": grad_rel,
            "gradient_worst_tensor": grad_at,
            "parameters_without_gradient_toolkit": without_gradient,
            "parameters_without_gradient_reference": reference_without,
            "gradient_norm_toolkit": run.first_grad_norm,
            "gradient_norm_reference": reference_info["first_grad_norm"],
            "weights_after_first_step_max_relative_difference": after_rel,
            "weights_after_first_step_worst_tensor": after_at,
        },
        "lrs_equal": bool(np.allclose(run.lrs, np.asarray(reference["lrs"]), rtol=0, atol=1e-12)),
        "loss_max_relative_difference": float(difference.max()),
        "first_step_over_tolerance": int(over[0]) if over.size else None,
        # the first step whose gradient norm (before clipping) is not bit for bit nnU-Net's
        "first_step_gradient_norm_differs": int(norms_differ[0]) if norms_differ.size else None,
        "first_step_loss_differs": int(np.flatnonzero(ours != ref_losses)[0])
        if (ours != ref_losses).any()
        else None,
        "final_weights_max_relative_difference": final_rel,
        "final_weights_worst_tensor": final_at,
        "losses_toolkit": [float(v) for v in ours],
        "losses_reference": [float(v) for v in ref_losses],
        "loss_first_last": [float(ref_losses[0]), float(ref_losses[-1])],
    }


def run_reference(
    python: Path,
    folder: Path,
    plans: dict,
    epochs: int,
    iterations: int,
    seed: int,
    scale_heads: float,
) -> tuple[object, dict]:
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    command = [str(python), str(REFERENCE), "--plans", str(folder / "plans.json")]
    command += ["--dataset", str(folder / "dataset.json"), "--batches", str(folder / "batches.npz")]
    command += ["--out", str(folder / "reference.npz"), "--epochs", str(epochs)]
    command += ["--iterations", str(iterations), "--seed", str(seed)]
    command += ["--scale-heads", str(scale_heads)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_compile": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the reference's lockstep failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return np.load(folder / "reference.npz"), json.loads(line[len("RESULT ") :])


def lockstep(
    folder: Path,
    *,
    epochs: int,
    iterations: int,
    batch_dice: bool = True,
    seed: int = 0,
    scale_heads: float = 1.0,
    distinct_batches: int = 50,
    python: Path | None = None,
) -> dict:
    """Both halves in ``folder``; the comparison (see :func:`compare`). ``scale_heads``
    enlarges the initial segmentation heads (of both: the toolkit starts from the reference's
    weights), so that the first steps' gradients exceed the clipping norm."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images, labels = make_batches(distinct_batches, seed)
    np.savez(folder / "batches.npz", data=images, target=labels)
    plans = nnunet_plans(batch_dice)
    reference, info = run_reference(
        python or reference_python(), folder, plans, epochs, iterations, seed, scale_heads
    )
    run = run_toolkit(plans, images, labels, reference, epochs, iterations)
    result = compare(run, reference, info)
    result.update(
        reference=info,
        torch_toolkit=torch.__version__,
        epochs=epochs,
        iterations=iterations,
        batch_dice=batch_dice,
        scale_heads=scale_heads,
        clipped_steps=int((np.asarray(reference["grad_norms"]) > GRAD_CLIP).sum()),
        largest_gradient_norm=float(np.max(reference["grad_norms"])),
        patch_size=list(PATCH),
        batch_size=BATCH_SIZE,
        loss_tolerance=LOSS_TOLERANCE,
        weight_tolerance=WEIGHT_TOLERANCE,
    )
    return result


def render(data: dict) -> str:
    from bench import harness

    lines = [
        "# Lockstep: the toolkit's training step against nnU-Net v2's `nnUNetTrainer.train_step`",
        "",
        f"Machine: {data['machine']['cpus']} CPUs, load {data['machine']['load_average']}, "
        f"{data['machine']['date']}. Toolkit torch {data['torch_toolkit']}; nnU-Net v2 "
        f"{data['runs'][0]['reference']['nnunetv2']} with torch {data['runs'][0]['reference']['torch']}. "
        f"fp32, CPU, one thread, deterministic algorithms. Plan: 4-stage `PlainConvUNet` "
        f"(features 4-8-16-32, three deep-supervision outputs), patch {data['runs'][0]['patch_size']}, batch "
        f"{data['runs'][0]['batch_size']}; synthetic batches written once, read by both; the same "
        "initial weights (nnU-Net's He initialisation, seeded).",
        "",
    ]
    rows = []
    for r in data["runs"]:
        f = r["first_step"]
        rows.append(
            [
                "batch Dice" if r["batch_dice"] else "sample Dice",
                f"x{r['scale_heads']:g}",
                f"{r['clipped_steps']} ({r['largest_gradient_norm']:.1f})",
                f"{r['epochs']} x {r['iterations']}",
                f"{max(f['outputs_max_relative_difference']):.1e}",
                f"{abs(f['toolkit_loss_of_reference_outputs'] - f['loss_reference']):.1e}",
                f"{f['gradient_max_relative_difference']:.1e}",
                f"{f['weights_after_first_step_max_relative_difference']:.1e}",
                f"{r['loss_max_relative_difference']:.1e}",
                "none"
                if r["first_step_over_tolerance"] is None
                else r["first_step_over_tolerance"],
                f"{r['final_weights_max_relative_difference']:.1e}",
                f"{r['loss_first_last'][0]:.3f} -> {r['loss_first_last'][1]:.3f}",
            ]
        )
    lines.append(
        harness.markdown_table(
            [
                "loss",
                "initial heads",
                "steps clipped (largest norm)",
                "epochs x iterations",
                "step 0 outputs",
                "step 0 loss (same outputs)",
                "step 0 gradients",
                "weights after step 1",
                "losses, all steps",
                "first step over 1e-4",
                "final weights",
                "loss (nnU-Net), first -> last",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Differences are relative: outputs and weights to the largest magnitude of each tensor "
        "(at least 0.01: the conv biases before instance norm only ever get rounding noise, "
        "about 1e-8), losses to max(1, |loss|). With clipping acting, the total gradient norm "
        "sums the per-tensor norms in parameter order, which differs between the two networks "
        "(the toolkit's: encoder, transposed convs, decoder, heads; nnU-Net's: encoder, "
        "decoder stages, transposed convs, heads), so the clipping factor can differ in its "
        "last bit (`first_step_gradient_norm_differs` in the JSON); from there the runs drift "
        "apart as runs do from any rounding difference. Reproduce: `python -m bench.lockstep`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench import harness

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = []
    for batch_dice, scale_heads in ((True, 1.0), (False, 1.0), (True, 30.0), (False, 30.0)):
        with tempfile.TemporaryDirectory(prefix="lockstep-") as tmp:
            runs.append(
                lockstep(
                    Path(tmp),
                    epochs=args.epochs,
                    iterations=args.iterations,
                    batch_dice=batch_dice,
                    seed=args.seed,
                    scale_heads=scale_heads,
                )
            )
    data = {"machine": harness.machine(), "torch_toolkit": torch.__version__, "runs": runs}
    harness.write_results("lockstep", data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
