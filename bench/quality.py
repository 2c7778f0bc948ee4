"""Equal-budget quality against nnU-Net v2: the same plan, split and iterations, several seeds.

On a task built from real anatomy (:mod:`bench.anatomy`: four deep grey structures), nnU-Net
v2 plans the dataset with the network of the toolkit's ``cpu`` preset (``--plan cpu``, the
default) or with its own planner under a small memory target and narrowed features
(``--plan nnunet``), so that a CPU trains it in minutes; the toolkit takes exactly nnU-Net's
resulting plan (read through its nnU-Net v2 plans converter), the same split (``splits.json`` = nnU-Net's ``splits_final.json``), and every
arm trains fold 0 for the same number of epochs and iterations, ``--seeds`` times each:

* ``toolkit``: ``toolkit train`` in fp32; ``toolkit_bf16``: the same in bf16;
* ``nnunet``: nnU-Net v2's own trainer (fp32 on the CPU);
* ``crossover``: the toolkit's trainer fed nnU-Net's own training batches
  (:mod:`bench.crossover`), which separates the data pipeline from the step;
* ``swap``: ``toolkit train --pretrained`` from nnU-Net's initial weights of the same seed
  (its draw, saved by ``bench/init_swap_reference.py``): the toolkit's batches and trainer,
  paired with the ``nnunet`` arm's draw, which takes the draw of the initial weights out of
  the comparison.

Every model then predicts the same held-out cases (``labelsTs``, without test-time
mirroring), scored with the toolkit's metrics. Reported: Dice per class and arm (mean over
seeds), the seed-to-seed spread of each arm's mean Dice, the per-case paired difference of
each toolkit arm minus nnU-Net (averaged over seeds) with a bootstrap interval, per-case
Dice, and the learning curves (pseudo-Dice per epoch). Runs go two at a time, one core each:
``toolkit`` beside ``nnunet`` for every seed first, then ``crossover`` beside ``toolkit_bf16``,
then ``swap``; the results are rewritten after every pair.

    python -m bench.quality [--seeds 3] [--epochs 20] [--iterations 50] [--plan cpu|nnunet] \
        [--arms toolkit nnunet crossover toolkit_bf16 swap] [--work DIR --keep-prepared]

Needs nnU-Net v2 in ``bench/.venv-nnunet`` (made on first use, several GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt

from bench import anatomy, harness
from toolkit.core.splits import load_or_create_splits
from toolkit.evaluation.metrics import case_metrics
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.nets import nnunet_v2
from toolkit.training.history import read_log
from toolkit.workspace import TRAINING_LOG, DatasetPaths

NAME = "quality"
DATASET_ID = 905
# a false positive this far (voxels, Euclidean) from its class in the reference is a blob
# away from the structure, not a boundary error
FAR_VOXELS = 8
REFERENCE = harness.BENCH / "nnunet_v2_reference.py"
INITIAL_REFERENCE = harness.BENCH / "init_swap_reference.py"
# the arms: nnU-Net v2's own run, the toolkit's (fp32, and bf16 beside it), and the cross-over
# (the toolkit's trainer on nnU-Net's batches), the swap (the toolkit's batches and trainer
# from nnU-Net's initial weights); each toolkit arm is compared with nnU-Net's
ARMS = {
    "toolkit": "toolkit, fp32",
    "nnunet": "nnU-Net v2, fp32",
    "crossover": "toolkit's trainer, nnU-Net's batches, fp32",
    "toolkit_bf16": "toolkit, bf16",
    "swap": "toolkit's batches and trainer from nnU-Net's initial weights, fp32",
}
# run two at a time (one core each): the main comparison first, for every seed
PAIRS = (("toolkit", "nnunet"), ("crossover", "toolkit_bf16"), ("swap",))
NETWORK_KEYS = (
    "features_per_stage",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
)


def _run(command: list, log: Path, env: dict | None = None) -> str:
    m = harness.measure([str(c) for c in command], log, env=env).check()
    harness.log(f"{Path(log).stem}: {m.wall_s:.0f} s")
    return Path(m.log).read_text()


def _result(output: str) -> dict:
    line = [x for x in output.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def prepare(work: Path, args: argparse.Namespace) -> tuple[DatasetPaths, Path, dict]:
    """The task converted for the toolkit, nnU-Net's plan (also ours) and its preprocessing."""
    source = anatomy.write_task(work / "source", args.cases, args.test_cases, seed=0)
    toolkit = [sys.executable, "-m", "toolkit"]
    ws = work / "ws"
    _run([*toolkit, "convert", source, "-w", ws, "--force"], work / "logs" / "convert.log")
    paths = DatasetPaths(ws / anatomy.TASK)
    root = work / "nnunet"
    network_args = []
    if args.plan == "cpu":  # the toolkit's cpu preset plans the network; nnU-Net takes it
        for stage in (["fingerprint"], ["plan", "--preset", "cpu"]):
            _run([*toolkit, *stage, paths.name, "-w", ws], work / "logs" / f"{stage[0]}.log")
        ours = json.loads(paths.plans_json.read_text())["configurations"]["3d_fullres"]
        network = {"patch_size": ours["patch_size"], "batch_size": ours["batch_size"]}
        network.update({k: ours["architecture"][k] for k in NETWORK_KEYS})
        (work / "network.json").write_text(json.dumps(network))
        network_args = ["--network", work / "network.json"]
    output = _run(
        [
            harness.ensure_nnunet(),
            REFERENCE,
            "prepare",
            "--root",
            root,
            "--raw",
            paths.raw,
            "--dataset-id",
            DATASET_ID,
            "--name",
            "DeepGrey",
            "--width-divisor",
            args.width_divisor,
            "--gpu-memory",
            args.gpu_memory,
            "--processes",
            2,
            *network_args,
        ],
        work / "logs" / "nnunet_prepare.log",
    )
    prepared = _result(output)
    nnunet_plans = json.loads(Path(prepared["plans"]).read_text())
    dataset_json = json.loads((paths.raw / "dataset.json").read_text())
    plans = nnunet_v2.convert_plans(nnunet_plans, dataset_json)
    plans.configurations = {"3d_fullres": plans.configuration("3d_fullres")}
    plans.dataset_name = paths.name
    plans.save(paths.plans_json)
    _run(
        [*toolkit, "preprocess", paths.name, "-w", ws, "--configs", "3d_fullres", "-q"],
        work / "logs" / "preprocess.log",
    )
    # one split for both tools: ours, written as nnU-Net's splits_final.json
    cases = [c.case for c in training_cases(paths, load_dataset_info(paths))]
    splits = load_or_create_splits(paths.splits_json, cases)
    nnunet_dataset = root / "nnUNet_preprocessed" / prepared["dataset"]
    (nnunet_dataset / "splits_final.json").write_text(
        json.dumps([s.to_json() for s in splits], indent=2)
    )
    return paths, root, prepared


def arm_paths(paths: DatasetPaths, work: Path, arm: str, seed: int) -> DatasetPaths:
    """The dataset seen through its own folder per toolkit run: every entry linked except
    ``models/``, so that runs side by side (two seeds of one arm too) never share a fold
    folder or the dataset's lock."""
    folder = work / f"ws_{arm}_{seed}" / paths.name
    if not folder.exists():
        folder.mkdir(parents=True)
        for entry in paths.root.iterdir():
            if entry.name != "models":
                (folder / entry.name).symlink_to(entry.resolve())
    return DatasetPaths(folder)


def toolkit_curve(paths: DatasetPaths) -> dict:
    """Per epoch: the pseudo-Dice per class and the training loss, from the fold's log."""
    records = read_log(paths.fold_dir("3d_fullres", 0) / TRAINING_LOG)
    return {
        "pseudo_dice": [[float("nan") if d is None else d for d in r.pseudo_dice] for r in records],
        "train_loss": [r.train_loss for r in records],
    }


def train_and_predict_ours(
    paths: DatasetPaths, test_images: Path, out: Path, seed: int, args, arm: str
) -> tuple[float, dict]:
    """One toolkit arm: ``toolkit`` (fp32), ``toolkit_bf16``, ``crossover`` (the toolkit's
    trainer fed nnU-Net's training batches, :mod:`bench.crossover`) or ``swap`` (from
    nnU-Net's initial weights of ``seed``)."""
    toolkit = [sys.executable, "-m", "toolkit"]
    paths = arm_paths(paths, out, arm, seed)
    fold_dir = paths.fold_dir("3d_fullres", 0)
    if fold_dir.exists():
        shutil.rmtree(fold_dir)
    log = out / "logs" / f"{arm}_train_{seed}.log"
    if arm == "crossover":
        prefix = out / "nnunet_batches" / f"seed_{seed}"
        dump = [sys.executable, "-m", "bench.crossover", "dump", "--root", out / "nnunet"]
        dump += ["--dataset-id", DATASET_ID, "--count", args.epochs * args.iterations]
        dump += ["--seed", seed, "--prefix", prefix]
        _run(dump, out / "logs" / f"crossover_dump_{seed}.log")
        train = [sys.executable, "-m", "bench.crossover", "train", "--dataset-dir", paths.root]
        train += ["--prefix", prefix, "--epochs", args.epochs, "--iterations", args.iterations]
        train += ["--seed", seed, "--precision", "fp32"]
    else:
        train = [*toolkit, "train", paths.name, "3d_fullres", "0", "-w", paths.root.parent]
        train += ["--epochs", args.epochs, "--iters-per-epoch", args.iterations]
        train += ["--val-iters", max(1, args.iterations // 5), "--seed", seed, "--device", "cpu"]
        train += ["--precision", "bf16" if arm == "toolkit_bf16" else "fp32"]
        train += ["--no-validate", "-q"]
        if arm == "swap":
            train += ["--pretrained", nnunet_initial_weights(out, seed)]
    m = harness.measure([str(c) for c in train], log).check()
    if arm == "crossover":
        for suffix in ("data", "target"):
            Path(f"{prefix}_{suffix}.npy").unlink(missing_ok=True)  # hundreds of MB each
    # the arm's own precision (nnU-Net's predictor runs in fp32; auto would pick bf16 here)
    predict_ours(
        paths.model_dir("3d_fullres"),
        test_images,
        out / f"{arm}_{seed}",
        "bf16" if arm == "toolkit_bf16" else "fp32",
        out / "logs" / f"{arm}_predict_{seed}.log",
    )
    return m.wall_s, toolkit_curve(paths)


def nnunet_initial_weights(out: Path, seed: int) -> Path:
    """nnU-Net's initial weights of ``seed`` (the ``nnunet`` arm's draw: the same seeding
    before its trainer builds the network) as a checkpoint ``toolkit train --pretrained``
    reads; written once per seed."""
    checkpoint = out / f"nnunet_initial_{seed}.pth"
    if not checkpoint.is_file():
        command = [harness.ensure_nnunet(), INITIAL_REFERENCE, "--root", out / "nnunet"]
        command += ["--scratch", out / f"swap_scratch_{seed}", "--seed", seed]
        command += ["--iterations", 1, "--save-initial", checkpoint]
        _run(command, out / "logs" / f"swap_initial_{seed}.log")
    return checkpoint


def predict_ours(
    model: Path, images: Path, out: Path, precision: str, log: Path, env: dict | None = None
) -> None:
    """``toolkit predict`` of fold 0 of ``model`` on the CPU, without mirroring."""
    command = [sys.executable, "-m", "toolkit", "predict", "-i", images, "-o", out, "-m", model]
    command += ["-f", "0", "--no-tta", "--device", "cpu", "-q", "--precision", precision]
    _run(command, log, env=env)


def train_and_predict_nnunet(
    root: Path, test_images: Path, out: Path, seed: int, args
) -> tuple[float, dict]:
    python = harness.ensure_nnunet()
    results = root / "nnUNet_results"
    if results.exists():
        shutil.rmtree(results)
    train = [python, REFERENCE, "train", "--root", root, "--dataset-id", DATASET_ID]
    train += ["--configuration", "3d_fullres", "--fold", 0, "--epochs", args.epochs]
    train += ["--iterations", args.iterations, "--seed", seed]
    log = out / "logs" / f"nnunet_train_{seed}.log"
    m = harness.measure([str(c) for c in train], log).check()
    trained = _result(Path(m.log).read_text())
    model = trained["model"]
    # nnU-Net reads CASE_0000 files: the held-out images renamed by links
    inputs = out / f"nnunet_inputs_{seed}"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    for image in sorted(test_images.glob("*.nii.gz")):
        (inputs / image.name.replace(".nii.gz", "_0000.nii.gz")).symlink_to(image.resolve())
    predict = [python, REFERENCE, "predict", "--model", model, "--input", inputs]
    predict += ["--output", out / f"nnunet_{seed}", "--folds", "0", "--no-tta"]
    _run(predict, out / "logs" / f"nnunet_predict_{seed}.log")
    return m.wall_s, {"pseudo_dice": trained["pseudo_dice"], "train_loss": trained["train_loss"]}


def case_dice(prediction_dir: Path, reference_dir: Path, labels: list[int]) -> dict[str, list]:
    """Case name -> Dice per foreground label."""
    scores = {}
    for reference_path in sorted(reference_dir.glob("*.nii.gz")):
        reference = sitk.ReadImage(str(reference_path))
        predicted = sitk.ReadImage(str(prediction_dir / reference_path.name))
        rows = case_metrics(
            sitk.GetArrayFromImage(reference),
            sitk.GetArrayFromImage(predicted),
            labels,
            reference.GetSpacing()[::-1],
        )
        scores[reference_path.name] = [r.dice for r in rows]
    return scores


def voxel_errors(prediction_dir: Path, reference_dir: Path) -> dict[str, int]:
    """Foreground voxels over all held-out cases and classes: predicted, in the reference,
    predicted with a label the reference does not have there (false positive), and of the
    reference given another label (false negative): over- against under-segmentation; and
    the false positives of each class lying more than ``FAR_VOXELS`` from that class in the
    reference (``false_positive_far``: blobs away from the structure, not its boundary)."""
    keys = ("predicted", "reference", "false_positive", "false_negative", "false_positive_far")
    totals = dict.fromkeys(keys, 0)
    for reference_path in sorted(reference_dir.glob("*.nii.gz")):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path)))
        predicted = sitk.GetArrayFromImage(
            sitk.ReadImage(str(prediction_dir / reference_path.name))
        )
        wrong = predicted != reference
        totals["predicted"] += int((predicted > 0).sum())
        totals["reference"] += int((reference > 0).sum())
        totals["false_positive"] += int(((predicted > 0) & wrong).sum())
        totals["false_negative"] += int(((reference > 0) & wrong).sum())
        for value in np.unique(predicted[predicted > 0]):
            extra = (predicted == value) & (reference != value)
            if (reference == value).any():
                extra &= distance_transform_edt(reference != value) > FAR_VOXELS
            totals["false_positive_far"] += int(extra.sum())
    return totals


def score(data: dict, tool: str, seed: int, work: Path, references: Path, labels: list[int]):
    """Dice per case and class, and the voxel errors, of one run's held-out predictions."""
    predictions = work / f"{tool}_{seed}"
    data["dice"].setdefault(tool, {})[str(seed)] = case_dice(predictions, references, labels)
    data.setdefault("errors", {}).setdefault(tool, {})[str(seed)] = voxel_errors(
        predictions, references
    )


def bootstrap_interval(values: np.ndarray, samples: int = 1000, seed: int = 12345) -> list:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, values.size, values.size)].mean() for _ in range(samples)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summarize(data: dict) -> dict:
    names = data["class_names"]
    out = {}
    tools = [t for t in ARMS if data["dice"].get(t)]
    for tool in tools:
        runs = data["dice"][tool]  # seed -> case -> [dice per class]
        per_seed = [np.nanmean(np.array(list(r.values())), axis=0) for r in runs.values()]
        out[tool] = {
            "class_dice": dict(zip(names, np.mean(per_seed, axis=0).tolist(), strict=True)),
            "mean_dice_per_seed": [float(np.mean(s)) for s in per_seed],
        }
        spread = out[tool]["mean_dice_per_seed"]
        out[tool]["seed_spread"] = float(statistics.pstdev(spread)) if len(spread) > 1 else 0.0
    if "nnunet" not in tools:
        return out
    cases = sorted(next(iter(data["dice"]["nnunet"].values())))

    def case_means(tool: str) -> np.ndarray:
        runs = data["dice"][tool].values()
        return np.array([np.mean([np.nanmean(r[c]) for r in runs]) for c in cases])

    out["case_mean_dice"] = {
        t: dict(zip(cases, case_means(t).tolist(), strict=True)) for t in tools
    }
    out["paired_difference"] = {}
    for tool in tools:
        if tool == "nnunet":
            continue
        difference = case_means(tool) - case_means("nnunet")
        out["paired_difference"][tool] = {
            "mean": float(difference.mean()),
            "interval": bootstrap_interval(difference),
            "cases": len(cases),
        }
    return out


def curve_means(data: dict) -> dict[str, list[float]]:
    """Per arm: the mean pseudo-Dice (over classes, then seeds) of every epoch."""
    out = {}
    for tool, runs in data.get("curves", {}).items():
        if not runs:
            continue
        per_seed = [
            [float(np.nanmean(epoch)) if len(epoch) else float("nan") for epoch in r["pseudo_dice"]]
            for r in runs.values()
        ]
        length = min(len(c) for c in per_seed)
        out[tool] = [float(np.nanmean([c[e] for c in per_seed])) for e in range(length)]
    return out


def plan_text(data: dict) -> str:
    if data.get("plan") == "cpu":
        narrowed = data.get("width_divisor", 1)
        return "the toolkit's `cpu` preset network given to nnU-Net v2's plans" + (
            f", its features divided by {narrowed}" if narrowed > 1 else ""
        )
    return (
        f"nnU-Net v2's own, planned with a {data['gpu_memory']} GB memory target and features "
        f"divided by {data['width_divisor']}"
    )


def render(data: dict) -> str:
    s = data["summary"]
    m = data["machine"]
    tools = [t for t in ARMS if t in s]
    lines = [
        "# Equal-budget quality: toolkit vs nnU-Net v2",
        "",
        f"Machine: {m['cpus']} CPUs ({', '.join(m.get('cpu_flags', []))}), load "
        f"{m['load_average']} at the start, {m['date']}. Task: "
        f"`{anatomy.TASK}` from `bench/anatomy.py` ({data['cases']} training cases, "
        f"{data['test_cases']} held out; four deep grey structures of the Colin 27 brain under "
        f"random smooth deformations). Plan: {plan_text(data)}, used by both tools (patch "
        f"{data['patch_size']}, features {data.get('features')}); fold 0 of the same split; "
        f"{data['epochs']} x {data['iterations']} iterations; {data['seeds']} seed(s) per arm; "
        "held-out cases predicted without mirroring; "
        f"{data.get('threads', 2)} torch thread(s) per run"
        + (", two runs side by side" if data.get("side_by_side") else "")
        + " (train times are therefore not a speed comparison: see `bench/train.py`).",
        "",
        "Arms: " + "; ".join(f"`{t}`: {ARMS[t]}" for t in tools) + ".",
        "",
    ]
    names = data["class_names"]
    rows = [[tool, *[s[tool]["class_dice"][n] for n in names]] for tool in tools]
    lines.append(harness.markdown_table(["arm", *names], rows))
    lines += [""]
    rows = [
        [
            tool,
            float(np.mean(s[tool]["mean_dice_per_seed"])),
            ", ".join(f"{v:.3f}" for v in s[tool]["mean_dice_per_seed"]),
            s[tool]["seed_spread"],
            statistics.median(data["train_seconds"][tool]),
        ]
        for tool in tools
    ]
    lines.append(
        harness.markdown_table(
            ["arm", "mean Dice", "per seed", "seed-to-seed std", "train s (median)"], rows
        )
    )
    command = (
        f"python -m bench.quality --seeds {data['seeds']} --epochs {data['epochs']} "
        f"--iterations {data['iterations']} --plan {data.get('plan', 'nnunet')} "
        f"--width-divisor {data['width_divisor']}"
    )
    done = "; ".join(f"`{t}` {', '.join(sorted(data['dice'][t], key=int))}" for t in tools)
    lines += [
        "",
        f"Reproduce: `{command}` (seeds per arm in these results: {done}; runs are added to "
        "earlier results with `--add --runs ARM:SEED,ARM:SEED`).",
        "",
    ]
    for tool, d in s.get("paired_difference", {}).items():
        lines.append(
            f"- `{tool}` minus nnU-Net v2, per case (mean Dice over classes, averaged over "
            f"seeds): {d['mean']:+.4f}, 95% bootstrap interval "
            f"[{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}] over {d['cases']} cases."
        )
    if "case_mean_dice" in s:
        cases = sorted(s["case_mean_dice"]["nnunet"])
        rows = [[c, *[s["case_mean_dice"][t][c] for t in tools]] for c in cases]
        lines += ["", "Per case (mean Dice over classes, averaged over seeds):", ""]
        lines.append(harness.markdown_table(["case", *tools], rows))
    errors = data.get("errors", {})
    if errors:
        rows = []
        for tool in tools:
            for seed, e in sorted(errors.get(tool, {}).items(), key=lambda kv: int(kv[0])):
                rows.append(
                    [
                        tool,
                        seed,
                        e["predicted"],
                        e["reference"],
                        e["false_positive"],
                        e["false_negative"],
                        e["false_positive"] / max(1, e["false_negative"]),
                        e.get("false_positive_far", "-"),
                    ]
                )
        lines += [
            "",
            "Voxel errors over the held-out cases (all cases and classes summed): foreground "
            "predicted and in the reference, false positives (foreground predicted where the "
            "reference has another label) and false negatives; the last column counts the "
            f"false positives more than {FAR_VOXELS} voxels from their class in the reference "
            "(away from the structure rather than on its boundary; '-' where the run was "
            "scored before it was counted):",
            "",
        ]
        header = ["arm", "seed", "predicted", "reference", "false +", "false -", "FP / FN"]
        lines.append(harness.markdown_table([*header, f"false + > {FAR_VOXELS} voxels"], rows))
    curves = curve_means(data)
    if curves:
        arms = [t for t in tools if t in curves]
        epochs = max(len(c) for c in curves.values())
        rows = [
            [e, *[curves[t][e] if e < len(curves[t]) else float("nan") for t in arms]]
            for e in range(epochs)
        ]
        lines += [
            "",
            "Learning curves: mean pseudo-Dice per epoch (over classes, then seeds; each tool "
            "on its own validation batches of the same validation cases; per seed and class in "
            "the JSON):",
            "",
        ]
        lines.append(harness.markdown_table(["epoch", *arms], rows))
    return "\n".join(lines)


def run_groups(args: argparse.Namespace, arms: list[str]) -> list[list[tuple[str, int]]]:
    """Which runs go side by side: ``--runs`` as given (``arm:seed,arm:seed`` per group), else
    each pair of :data:`PAIRS` for every seed, the main comparison first."""
    if args.runs:
        groups = []
        for text in args.runs:
            group = []
            for item in text.split(","):
                arm, _, seed = item.partition(":")
                if arm not in ARMS or not seed.isdigit():
                    raise SystemExit(
                        f"--runs: {item!r} is not ARM:SEED with ARM one of {list(ARMS)}"
                    )
                group.append((arm, int(seed)))
            groups.append(group)
        return groups
    return [[(t, seed) for t in pair if t in arms] for pair in PAIRS for seed in range(args.seeds)]


def claim_work_folder(pid_file: Path) -> None:
    """One run at a time: a second would delete the first one's work folder under it."""
    if pid_file.is_file():
        try:
            os.kill(int(pid_file.read_text()), 0)
        except (ValueError, ProcessLookupError):
            pass  # a run that is gone
        else:
            raise SystemExit(f"another bench.quality run (pid {pid_file.read_text()}) is running")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=50, help="iterations per epoch")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument(
        "--plan",
        choices=("cpu", "nnunet"),
        default="cpu",
        help="cpu: the toolkit's cpu preset network, given to nnU-Net; nnunet: nnU-Net's own "
        "planner with --gpu-memory and --width-divisor",
    )
    parser.add_argument("--gpu-memory", type=float, default=0.5, help="nnU-Net's memory target")
    parser.add_argument(
        "--width-divisor",
        type=int,
        default=None,
        help="the plan's features divided by this (default: 4 with --plan nnunet, 1 with cpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of each tool (OMP_NUM_THREADS)"
    )
    parser.add_argument(
        "--side-by-side",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train and predict the two tools of a seed at the same time (one core each)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=list(ARMS),
        help="which runs: toolkit (fp32), nnunet, crossover (the toolkit's trainer on "
        "nnU-Net's batches), toolkit_bf16, swap (the toolkit from nnU-Net's initial weights)",
    )
    parser.add_argument("--work", type=Path, default=harness.WORK / NAME, help="work folder")
    parser.add_argument(
        "--keep-prepared",
        action="store_true",
        help="reuse the task, plans and preprocessing an earlier run left in --work",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="groups of runs side by side, each ARM:SEED[,ARM:SEED] (instead of --arms x --seeds)",
    )
    parser.add_argument(
        "--add",
        action="store_true",
        help="add these runs to bench/results/quality.json (same task, plan and budget)",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score again the predictions --work still holds for the runs in the results "
        "(Dice and voxel errors), then rewrite them",
    )
    args = parser.parse_args(argv)
    if args.width_divisor is None:
        args.width_divisor = 4 if args.plan == "nnunet" else 1
    if args.render or args.rescore:
        data = json.loads((harness.RESULTS / f"{NAME}.json").read_text())
        if args.rescore:
            references = args.work / "source" / anatomy.TASK / "labelsTs"
            labels = list(range(1, len(data["class_names"]) + 1))
            for tool, runs in data["dice"].items():
                for seed in list(runs):
                    if (args.work / f"{tool}_{seed}").is_dir():
                        score(data, tool, int(seed), args.work, references, labels)
            data["summary"] = summarize(data)
        harness.write_results(NAME, data, render(data))
        return 0
    os.environ.setdefault("TOOLKIT_QUIET", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # both tools' subprocesses inherit it
    work = args.work
    claim_work_folder(work.parent / f"{work.name}.pid")
    record = work / "prepared.json"
    if args.keep_prepared and record.is_file():
        prepared = json.loads(record.read_text())
        paths, root = DatasetPaths(work / "ws" / anatomy.TASK), work / "nnunet"
        for old in [*work.glob("ws_*"), *work.glob("*_[0-9]*")]:
            if old.is_dir() and old.name not in ("ws", "nnunet", "source", "logs"):
                shutil.rmtree(old)  # earlier runs' arms and predictions
    else:
        shutil.rmtree(work, ignore_errors=True)
        paths, root, prepared = prepare(work, args)
        record.write_text(json.dumps(prepared))
    test_images = work / "source" / anatomy.TASK / "imagesTs"
    references = work / "source" / anatomy.TASK / "labelsTs"
    labels = [v for v in sorted(load_dataset_info(paths).labels.values()) if v]
    arms = [t for t in ARMS if t in args.arms]
    data = {
        "machine": harness.machine(),
        "nnunet": harness.nnunet_versions(),
        "cases": args.cases,
        "test_cases": args.test_cases,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "seeds": args.seeds,
        "gpu_memory": args.gpu_memory,
        "width_divisor": args.width_divisor,
        "plan": args.plan,
        "threads": args.threads,
        "side_by_side": args.side_by_side,
        "features": json.loads(paths.plans_json.read_text())["configurations"]["3d_fullres"][
            "architecture"
        ]["features_per_stage"],
        "patch_size": prepared["configurations"]["3d_fullres"],
        "class_names": list(anatomy.STRUCTURES),
        "dice": {t: {} for t in arms},
        "curves": {t: {} for t in arms},
        "train_seconds": {t: [] for t in arms},
    }
    if args.add:
        earlier = json.loads((harness.RESULTS / f"{NAME}.json").read_text())
        if (earlier["epochs"], earlier["iterations"]) != (args.epochs, args.iterations):
            raise SystemExit("--add: the earlier results used another budget")
        for key in ("dice", "curves", "train_seconds", "errors"):
            data[key] = {**data.get(key, {}), **earlier.get(key, {})}
        data["machine_earlier"] = earlier["machine"]

    def run_arm(tool: str, seed: int):
        if tool == "nnunet":
            return train_and_predict_nnunet(root, test_images, work, seed, args)
        return train_and_predict_ours(paths, test_images, work, seed, args, tool)

    for group in run_groups(args, arms):
        # side by side, one core each (--threads 1): neither waits for the other, and work
        # elsewhere on the machine cannot stall a multi-threaded step of one of them
        with ThreadPoolExecutor(max_workers=2 if args.side_by_side else 1) as pool:
            futures = {(t, seed): pool.submit(run_arm, t, seed) for t, seed in group}
            results = {key: f.result() for key, f in futures.items()}
        for (tool, seed), (seconds, curve) in results.items():
            data["dice"].setdefault(tool, {})
            data["curves"].setdefault(tool, {})
            data["train_seconds"].setdefault(tool, []).append(seconds)
            data["curves"][tool][str(seed)] = curve
            score(data, tool, seed, work, references, labels)
        data["seeds"] = max(len(runs) for runs in data["dice"].values())
        data["summary"] = summarize(data)
        harness.write_results(NAME, data, render(data))  # kept after every group
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
