"""Twins: nnU-Net v2's training and the toolkit's, from the same weights on the same real
batches, to the end, at full width; then both models predict the held-out cases.

``bench/lockstep.py`` checks the step on a small network and synthetic batches; this runs
the same comparison where the held-out gap of ``bench/quality.py`` was seen: the task and
plan ``bench/quality.py`` prepared (the ``cpu`` preset's 16-128 network, patch 28x32x40,
batch 2, five classes), fp32, one thread per tool, deterministic algorithms. For every seed:

1. nnU-Net's own loader and augmentation make ``epochs x iterations`` training batches,
   written once (``bench/crossover.py dump``);
2. nnU-Net's trainer (``bench/lockstep_reference.py``: its network with its seeded He
   initialisation, its ``train_step``, optimiser, ``PolyLRScheduler`` and loss) trains on
   them, while the toolkit's step (:func:`toolkit.training.trainer.train_step`, its
   network, loss, optimiser and schedule) trains from the same initial weights on the same
   batches, beside it;
3. each final network predicts the held-out cases with nnU-Net's own predictor (no
   mirroring), scored as ``bench/quality.py`` scores (Dice per class, voxel errors).

Two runs that start alike and see the same batches can only part through rounding (the
gradient-norm sum for clipping adds its terms in another order, see ``bench/lockstep.py``):
the step at full width is checked (losses step by step), and the distance between the two
final models is the Dice that rounding alone moves, against the gap between the tools.

    python -m bench.twin --work bench/work/quality [--seeds 0,1] [--epochs 20] [--iterations 150]

``--full-trainer`` runs ``toolkit train``'s whole loop instead of the step alone (from the twins'
initial weights of each seed, on their batches, predicted by ``toolkit predict``);
``--init-draws`` keeps one seed's batches and varies who draws the initial weights.

writes ``bench/results/twin.{json,md}`` (a seed run again replaces its entry). Needs
nnU-Net v2 (``TOOLKIT_NNUNET_PYTHON`` or ``bench/.venv-nnunet``) and a work folder that
``python -m bench.quality --keep-prepared`` prepared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import harness, lockstep
from bench.crossover import dump
from bench.init_swap import toolkit_initial_weights
from bench.quality import REFERENCE as NNUNET_REFERENCE
from bench.quality import (
    arm_paths,
    bootstrap_interval,
    case_dice,
    predict_ours,
    voxel_errors,
)
from toolkit.nets.nnunet_v2_weights import convert_state_dict
from toolkit.training.history import read_log
from toolkit.workspace import TRAINING_LOG, DatasetPaths

NAME = "twin"
DATASET = "Dataset905_DeepGrey"
DATASET_ID = 905
TASK = "Task905_DeepGrey"
CONFIGURATION = "3d_fullres"
CLASSES = ("caudate", "putamen", "thalamus", "hippocampus")


def reference_command(
    folder: Path, prefix: Path, epochs: int, iterations: int, seed: int, out: Path
):
    command = [str(lockstep.reference_python()), str(lockstep.REFERENCE)]
    command += ["--plans", str(folder / "plans.json"), "--dataset", str(folder / "dataset.json")]
    command += ["--batches", str(prefix), "--out", str(out), "--epochs", str(epochs)]
    command += ["--iterations", str(iterations), "--seed", str(seed)]
    return command


def nnunet_canonical(name: str) -> str:
    """The one name of a tensor that nnU-Net's state dict lists under several: its decoder
    holds the encoder again (``decoder.encoder.``), and each conv block its conv and norm
    again in ``all_modules`` (0: the conv, 1: the norm, with no dropout)."""
    if name.startswith("decoder.encoder."):
        name = name[len("decoder.") :]
    return re.sub(r"\.all_modules\.([01])\.", lambda m: (".conv.", ".norm.")[int(m[1])], name)


def reference_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_compile": "false"}


def result_line(text: str) -> dict:
    line = [x for x in text.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def model_folder(folder: Path, preprocessed: Path, weights: dict[str, torch.Tensor]) -> Path:
    """An nnU-Net v2 results folder holding ``weights`` (nnU-Net's names) as fold 0's final
    checkpoint, with the task's plans, dataset.json and fingerprint."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(preprocessed / "nnUNetPlans.json", folder / "plans.json")
    for name in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(preprocessed / name, folder / name)
    checkpoint = {
        "network_weights": weights,
        "init_args": {"configuration": CONFIGURATION},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def predict(model: Path, inputs: Path, output: Path, log: Path) -> None:
    command = [str(harness.ensure_nnunet()), str(NNUNET_REFERENCE), "predict", "--model", model]
    command += ["--input", inputs, "--output", output, "--folds", "0", "--no-tta"]
    harness.measure([str(c) for c in command], log, env=reference_env()).check()


def epoch_means(losses, iterations: int) -> list[float]:
    values = np.asarray(losses, dtype=np.float64)
    return [float(v) for v in values.reshape(-1, iterations).mean(axis=1)]


def prepared_batches(args: argparse.Namespace, seed: int) -> tuple[Path, Path, dict, dict]:
    """``twin/seed_S``: nnU-Net's training batches of loader seed ``seed`` (dumped once), the
    plans and dataset.json; the folder, the batches' prefix, the plans and the dataset."""
    preprocessed = args.work / "nnunet" / "nnUNet_preprocessed" / DATASET
    folder = args.work / NAME / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    steps = args.epochs * args.iterations
    prefix = folder / "batches"
    if not Path(f"{prefix}_target.npy").is_file() or (
        np.load(f"{prefix}_target.npy", mmap_mode="r").shape[0] < steps
    ):
        started = time.perf_counter()
        dump(args.work / "nnunet", DATASET_ID, steps, seed, prefix)
        harness.log(
            f"seed {seed}: {steps} batches of nnU-Net's loader in {time.perf_counter() - started:.0f} s"
        )
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder, prefix, plans, dataset


def nnunet_initial(folder: Path, prefix: Path, seed: int, out: Path):
    """nnU-Net's initial weights of ``seed`` (its trainer, no step taken) and its first step's
    outputs, as ``bench/lockstep_reference.py`` writes them."""
    done = subprocess.run(
        reference_command(folder, prefix, 1, 0, seed, out),
        capture_output=True,
        text=True,
        env=reference_env(),
    )
    if done.returncode != 0:
        raise SystemExit(f"nnU-Net's initial weights failed:\n{done.stderr[-3000:]}")
    return np.load(out)


def as_nnunet_names(ours: dict[str, np.ndarray], theirs: dict[str, torch.Tensor]) -> dict:
    """The toolkit's tensors under every name nnU-Net's state dict ``theirs`` lists."""
    names = convert_state_dict({k: k for k in theirs})  # our name -> nnU-Net's name
    aliases = [k for k in theirs if not torch.equal(theirs[k], theirs[nnunet_canonical(k)])]
    if aliases:
        raise SystemExit(f"nnU-Net's state dict holds other aliases than expected: {aliases[:5]}")
    canonical = {names[k]: torch.from_numpy(np.asarray(v)) for k, v in ours.items() if k in names}
    missing = sorted(k for k in theirs if nnunet_canonical(k) not in canonical)
    if missing:
        raise SystemExit(f"the toolkit's weights do not map onto nnU-Net's: {missing[:5]}")
    return {k: canonical[nnunet_canonical(k)] for k in theirs}


def score_weights(args, folder: Path, name: str, weights: dict[str, torch.Tensor]) -> dict:
    """``weights`` (nnU-Net's names) as an nnU-Net model predicting the held-out cases with
    nnU-Net's predictor (no mirroring): Dice per case and class, and the voxel errors."""
    preprocessed = args.work / "nnunet" / "nnUNet_preprocessed" / DATASET
    source = args.work / "source" / TASK
    inputs = folder / "inputs"
    if not inputs.is_dir():
        inputs.mkdir()
        for image in sorted((source / "imagesTs").glob("*.nii.gz")):
            (inputs / image.name.replace(".nii.gz", "_0000.nii.gz")).symlink_to(image.resolve())
    model = model_folder(folder / f"model_{name}", preprocessed, weights)
    output = folder / f"predicted_{name}"
    predict(model, inputs, output, folder / f"predict_{name}.log")
    return held_out_scores(output, source / "labelsTs")


def held_out_scores(predicted: Path, references: Path) -> dict:
    """Dice per case and class, and the voxel errors, of the predictions in ``predicted``."""
    dice = case_dice(predicted, references, list(range(1, len(CLASSES) + 1)))
    return {"dice": dice, "errors": voxel_errors(predicted, references)}


class Arrays(dict):
    """A dict read like an ``np.load`` archive (``.files``), for :func:`lockstep.run_toolkit`."""

    @property
    def files(self) -> list[str]:
        return list(self)


def toolkit_steps(plans, dataset, prefix: Path, initial, args) -> lockstep.ToolkitRun:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    images = np.load(f"{prefix}_data.npy", mmap_mode="r")
    labels = np.load(f"{prefix}_target.npy", mmap_mode="r")
    return lockstep.run_toolkit(
        plans, images, labels, initial, args.epochs, args.iterations, dataset
    )


def twin(args: argparse.Namespace, seed: int) -> dict:
    folder, prefix, plans, dataset = prepared_batches(args, seed)
    # the initial weights first (no step taken), so that the toolkit can start beside nnU-Net
    initial = nnunet_initial(folder, prefix, seed, folder / "initial.npz")
    log = open(folder / "reference.log", "w")
    started = time.perf_counter()
    reference_run = subprocess.Popen(
        reference_command(
            folder, prefix, args.epochs, args.iterations, seed, folder / "reference.npz"
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=reference_env(),
    )
    try:
        run = toolkit_steps(plans, dataset, prefix, initial, args)
        toolkit_s = time.perf_counter() - started
    finally:
        reference_run.wait()
        log.close()
    if reference_run.returncode != 0:
        raise SystemExit(f"nnU-Net's run failed: see {folder / 'reference.log'}")
    info = result_line((folder / "reference.log").read_text())
    reference = np.load(folder / "reference.npz")
    compared = lockstep.compare(run, reference, info)

    # both final networks, as nnU-Net models, predicted by nnU-Net's predictor
    theirs = lockstep.prefixed(reference, "final")
    ours = as_nnunet_names(run.final, theirs)
    scored = {
        tool: score_weights(args, folder, tool, w)
        for tool, w in (("nnunet", theirs), ("toolkit", ours))
    }
    compared.pop("losses_toolkit")
    compared.pop("losses_reference")
    return {
        "seed": seed,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "seconds": {"nnunet": info["seconds"], "toolkit_and_wait": toolkit_s},
        "reference": info,
        "comparison": compared,
        "epoch_loss": {
            "nnunet": epoch_means(reference["losses"], args.iterations),
            "toolkit": epoch_means(run.losses, args.iterations),
        },
        "scores": scored,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def init_draw(args: argparse.Namespace, drawn_by: str, seed: int) -> dict:
    """The toolkit's step (nnU-Net's, bit for bit: see :func:`twin`) on the batches of loader
    seed ``--batch-seed``, from the initial weights ``drawn_by`` (``nnunet``: its trainer's
    draw of ``seed``; ``toolkit``: ``toolkit train --seed seed``'s draw); scored as the twins."""
    folder, prefix, plans, dataset = prepared_batches(args, args.batch_seed)
    reference = nnunet_initial(folder, prefix, seed, folder / f"initial_nnunet_{seed}.npz")
    initial = Arrays({k: reference[k] for k in reference.files})
    if drawn_by == "toolkit":
        paths = DatasetPaths(args.work / "ws" / TASK)
        ours = torch.load(
            toolkit_initial_weights(paths, seed, folder / f"initial_toolkit_{seed}.pt"),
            weights_only=True,
        )
        theirs = lockstep.prefixed(reference, "initial")
        for k, v in as_nnunet_names({k: v.numpy() for k, v in ours.items()}, theirs).items():
            initial[f"initial:{k}"] = v.numpy()
    run = toolkit_steps(plans, dataset, prefix, initial, args)
    theirs = lockstep.prefixed(reference, "initial")
    name = f"{drawn_by}_init_{seed}"
    return {
        "drawn_by": drawn_by,
        "seed": seed,
        "batch_seed": args.batch_seed,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "epoch_loss": epoch_means(run.losses, args.iterations),
        "scores": score_weights(args, folder, name, as_nnunet_names(run.final, theirs)),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def full_trainer(args: argparse.Namespace, seed: int) -> dict:
    """``toolkit train``'s whole loop (:func:`toolkit.training.stage.train_fold`: its
    prefetcher, validation batches, checkpoints and logging; ``bench.crossover train``) from
    the twins' initial weights of ``seed`` on their batches, predicted by ``toolkit predict``
    (fp32, no mirroring): what the twins check of the step alone, through the command."""
    folder, prefix, _, _ = prepared_batches(args, seed)
    initial = nnunet_initial(folder, prefix, seed, folder / "initial.npz")
    checkpoint = folder / "initial_nnunet.pth"
    torch.save(
        {
            "network_weights": {
                k[len("initial:") :]: torch.from_numpy(initial[k])
                for k in initial.files
                if k.startswith("initial:")
            }
        },
        checkpoint,
    )
    paths = arm_paths(DatasetPaths(args.work / "ws" / TASK), folder, "full_trainer", seed)
    shutil.rmtree(paths.fold_dir(CONFIGURATION, 0), ignore_errors=True)
    train = [sys.executable, "-m", "bench.crossover", "train", "--dataset-dir", paths.root]
    train += ["--prefix", prefix, "--epochs", args.epochs, "--iterations", args.iterations]
    train += ["--seed", seed, "--precision", "fp32", "--pretrained", checkpoint]
    env = {**reference_env(), "TOOLKIT_QUIET": "1"}
    harness.measure([str(c) for c in train], folder / "full_trainer.log", env=env).check()
    losses = [r.train_loss for r in read_log(paths.fold_dir(CONFIGURATION, 0) / TRAINING_LOG)]
    source = args.work / "source" / TASK
    output = folder / "predicted_full_trainer"
    model = paths.model_dir(CONFIGURATION)
    predict_ours(
        model, source / "imagesTs", output, "fp32", folder / "full_trainer_predict.log", env
    )
    return {
        "seed": seed,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "epoch_loss": losses,
        "scores": held_out_scores(output, source / "labelsTs"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def full_trainer_text(data: dict) -> list[str]:
    """``--full-trainer`` runs beside the twins of their seed."""
    runs = data.get("full_trainer", {})
    if not runs:
        return []
    rows = []
    for key in sorted(runs, key=int):
        r, twin_run = runs[key], data["runs"].get(key)
        twin_loss = twin_run["epoch_loss"]["toolkit"] if twin_run else None
        gap = (
            max(abs(a - b) for a, b in zip(r["epoch_loss"], twin_loss, strict=True))
            if twin_loss and len(twin_loss) == len(r["epoch_loss"])
            else None
        )
        rows.append(
            [
                key,
                f"{r['epochs']} x {r['iterations']}",
                "-" if gap is None else f"{gap:.1e}",
                f"{r['epoch_loss'][0]:.4f} / {r['epoch_loss'][-1]:.4f}",
                "-"
                if twin_run is None
                else f"{mean_dice(twin_run['scores']['toolkit']['dice']):.3f}",
                f"{mean_dice(r['scores']['dice']):.3f}",
                f"{r['scores']['errors']['false_positive'] / 1000:.0f}k / "
                f"{r['scores']['errors']['false_negative'] / 1000:.0f}k",
            ]
        )
    return [
        "",
        "## `toolkit train`'s whole loop on the twins' weights and batches",
        "",
        "The twins check the toolkit's step. Here the command's own loop trains instead "
        "(`bench.crossover train --pretrained`: prefetching, validation batches, "
        "checkpoints, logging). It starts from the twins' initial weights and reads their "
        "batches. Its final checkpoint is predicted by `toolkit predict` (fp32, no mirroring).",
        "",
        harness.markdown_table(
            [
                "seed",
                "epochs x iterations",
                "largest difference of an epoch's mean loss from the twins'",
                "loss, first / last epoch",
                "held-out mean Dice, twins",
                "`toolkit train` + `toolkit predict`",
                "false + / false -",
            ],
            rows,
        ),
    ]


def mean_dice(dice: dict[str, list]) -> float:
    return float(np.mean([np.mean(v) for v in dice.values()]))


def init_draws_text(data: dict) -> list[str]:
    """The runs of ``--init-draws``, with the twins' nnU-Net draws on their own batches."""
    draws = [
        {
            "drawn_by": r["drawn_by"],
            "seed": r["seed"],
            "batch_seed": r["batch_seed"],
            "scores": r["scores"],
            "epoch_loss": r["epoch_loss"],
            "how": "toolkit's step",
        }
        for r in data.get("init_draws", {}).values()
    ]
    draws += [
        {
            "drawn_by": "nnunet",
            "seed": r["seed"],
            "batch_seed": r["seed"],
            "scores": r["scores"]["nnunet"],
            "epoch_loss": r["epoch_loss"]["nnunet"],
            "how": "twins (both steps, bit-equal)",
        }
        for r in data["runs"].values()
    ]
    if not data.get("init_draws"):
        return []
    draws.sort(key=lambda d: (d["batch_seed"], d["drawn_by"], d["seed"]))
    rows = [
        [
            d["batch_seed"],
            d["drawn_by"],
            d["seed"],
            d["how"],
            f"{d['epoch_loss'][0]:.4f}",
            f"{d['epoch_loss'][-1]:.4f}",
            f"{mean_dice(d['scores']['dice']):.3f}",
            f"{d['scores']['errors']['false_positive'] / 1000:.0f}k / "
            f"{d['scores']['errors']['false_negative'] / 1000:.0f}k",
        ]
        for d in draws
    ]
    means = []
    for batch_seed in sorted({d["batch_seed"] for d in draws}):
        for drawn_by in ("nnunet", "toolkit"):
            values = [
                mean_dice(d["scores"]["dice"])
                for d in draws
                if d["batch_seed"] == batch_seed and d["drawn_by"] == drawn_by
            ]
            if values:
                spread = f", sd {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
                means.append(
                    f"- batches of seed {batch_seed}, initial weights drawn by {drawn_by}: "
                    f"{np.mean(values):.3f} over {len(values)} draw(s){spread}"
                )
    return [
        "",
        "## Initial weights drawn by each tool, on the same batches",
        "",
        "The step being nnU-Net's bit for bit, what is left between a toolkit run and an "
        "nnU-Net run is the draw of the initial weights (the same He initialisation from "
        "different random streams) and of the batches. Here the batches are fixed (nnU-Net's "
        "loader of one seed) and only the initial weights change: drawn by nnU-Net's trainer "
        "or by `toolkit train --seed S`.",
        "",
        harness.markdown_table(
            [
                "batches (loader seed)",
                "initial weights drawn by",
                "seed",
                "trained by",
                "loss, epoch 0",
                "loss, last epoch",
                "held-out mean Dice",
                "false + / false -",
            ],
            rows,
        ),
        "",
        *means,
    ]


def render(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Twins: nnU-Net v2's trainer and the toolkit's from the same weights on the same batches",
        "",
        f"Machine: {m['cpus']} CPUs, load {m['load_average']}, {m['date']}. Task "
        f"`{TASK}` and plan as `bench/quality.py --plan cpu` prepared them (16-128 features, "
        "patch 28x32x40, batch 2, four foreground classes), fp32, one thread per tool, "
        "deterministic algorithms. Per seed: nnU-Net's own loader and augmentation wrote the "
        "training batches once; nnU-Net's `train_step` (its network with its seeded He "
        "initialisation, optimiser, `PolyLRScheduler`, loss) and the toolkit's `train_step` "
        "trained on them from the same initial weights, side by side; both final networks "
        "then predicted the six held-out cases with nnU-Net's predictor (no mirroring).",
        "",
    ]
    rows = []
    for key in sorted(data["runs"], key=int):
        r = data["runs"][key]
        c = r["comparison"]
        s = r["scores"]
        diff = [
            float(np.mean(t) - np.mean(n))
            for t, n in zip(
                s["toolkit"]["dice"].values(), s["nnunet"]["dice"].values(), strict=True
            )
        ]
        low, high = bootstrap_interval(np.asarray(diff))
        rows.append(
            [
                r["seed"],
                f"{r['epochs']} x {r['iterations']}",
                c["first_step_gradient_norm_differs"]
                if c["first_step_gradient_norm_differs"] is not None
                else "none",
                c["first_step_loss_differs"]
                if c["first_step_loss_differs"] is not None
                else "none",
                c["first_step_over_tolerance"]
                if c["first_step_over_tolerance"] is not None
                else "none",
                f"{c['final_weights_max_relative_difference']:.1e}",
                f"{mean_dice(s['nnunet']['dice']):.3f}",
                f"{mean_dice(s['toolkit']['dice']):.3f}",
                f"{np.mean(diff):+.3f} [{low:+.3f}, {high:+.3f}]",
                f"{s['nnunet']['errors']['false_positive'] / 1000:.0f}k / {s['nnunet']['errors']['false_negative'] / 1000:.0f}k",
                f"{s['toolkit']['errors']['false_positive'] / 1000:.0f}k / {s['toolkit']['errors']['false_negative'] / 1000:.0f}k",
            ]
        )
    lines.append(
        harness.markdown_table(
            [
                "seed",
                "epochs x iterations",
                "first step: gradient norm not bit-equal",
                "first step: loss not bit-equal",
                "first step: loss over 1e-4",
                "final weights (max relative difference)",
                "held-out mean Dice, nnU-Net twin",
                "toolkit twin",
                "toolkit - nnU-Net per case [95% CI]",
                "false + / false - voxels, nnU-Net twin",
                "toolkit twin",
            ],
            rows,
        )
    )
    lines += ["", "Held-out Dice per class:", ""]
    class_rows = []
    for key in sorted(data["runs"], key=int):
        for tool in ("nnunet", "toolkit"):
            dice = np.asarray(list(data["runs"][key]["scores"][tool]["dice"].values()))
            class_rows.append([key, tool, *[f"{v:.3f}" for v in dice.mean(axis=0)]])
    lines.append(harness.markdown_table(["seed", "twin", *CLASSES], class_rows))
    lines += ["", "Mean training loss per epoch (nnU-Net twin / toolkit twin):", ""]
    loss_rows = []
    for key in sorted(data["runs"], key=int):
        e = data["runs"][key]["epoch_loss"]
        shown = sorted({0, 1, 2, 4, 9, len(e["nnunet"]) - 1} & set(range(len(e["nnunet"]))))
        loss_rows.append([key, *[f"{e['nnunet'][i]:.4f} / {e['toolkit'][i]:.4f}" for i in shown]])
        header = [f"epoch {i}" for i in shown]
    if loss_rows:
        lines.append(harness.markdown_table(["seed", *header], loss_rows))
    lines += full_trainer_text(data)
    lines += init_draws_text(data)
    lines += [
        "",
        "Where the losses stay bit-equal to the last step and the final weights are equal, the "
        "two trainings are one and the same. The gradient norm may differ in its last bit (each "
        "network sums its parameters' norms in its own order), which changes nothing unless "
        "clipping acts (a norm above 12); where it acts, the twins part as any two runs do from "
        "a rounding difference, and the Dice between them is what rounding alone moves.",
        "",
        f"Reproduce: `python -m bench.twin --work WORK --seeds {','.join(sorted(data['runs'], key=int))} "
        f"--epochs E --iterations I` (WORK prepared by `python -m bench.quality --keep-prepared`); "
        "the whole loop: `--seeds S --full-trainer`; the initial draws: "
        "`--init-draws TOOL:SEED,... --batch-seed B`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="prepared by bench.quality")
    parser.add_argument("--seeds", default="0", help="twins of these seeds, e.g. 0,1")
    parser.add_argument(
        "--init-draws",
        default="",
        help="instead of twins: the step from initial weights drawn by TOOL with SEED on the "
        "batches of --batch-seed, e.g. toolkit:1,nnunet:1 (the batches are kept)",
    )
    parser.add_argument(
        "--full-trainer",
        action="store_true",
        help="instead of twins: `toolkit train`'s whole loop from the twins' initial weights of "
        "--seeds on their batches, predicted by `toolkit predict`",
    )
    parser.add_argument("--batch-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--keep-batches", action="store_true", help="keep the twins' batches")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown")
    args = parser.parse_args(argv)
    results = harness.RESULTS / f"{NAME}.json"

    def record(section: str, key: str, run: dict) -> dict:
        # read again: another process may have added runs meanwhile
        data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
        data.setdefault(section, {})[key] = run
        data["machine"] = harness.machine()
        harness.write_results(NAME, data, render(data))
        return data

    data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.init_draws:
        for item in [i for i in args.init_draws.split(",") if i.strip()]:
            drawn_by, _, seed = item.partition(":")
            if drawn_by not in ("toolkit", "nnunet") or not seed.isdigit():
                parser.error(f"--init-draws: TOOL:SEED with TOOL toolkit or nnunet, not {item!r}")
            run = init_draw(args, drawn_by, int(seed))
            data = record("init_draws", f"{drawn_by} {seed} batches {args.batch_seed}", run)
    elif args.full_trainer:
        for seed in seeds:
            data = record("full_trainer", str(seed), full_trainer(args, seed))
    elif not args.render:
        for seed in seeds:
            data = record("runs", str(seed), twin(args, seed))
            if not args.keep_batches:
                for name in ("data", "target"):
                    Path(args.work / NAME / f"seed_{seed}" / f"batches_{name}.npy").unlink(
                        missing_ok=True
                    )
    else:
        harness.write_results(NAME, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
