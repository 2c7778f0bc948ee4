"""Sparse against dense annotation at the same training budget (the ignore label).

The synthetic ``sparse`` task (:mod:`toolkit.synthetic`: the ``mr`` lesions, annotated on
every fourth slice only, the rest ``ignore``) is converted twice: as it is (``Sparse``), and
with the dense labels of the same training cases (``Dense``: the same ``dataset.json``, so the
same label model and network). Both are planned, preprocessed and trained the same way
(``3d_fullres``, fold 0, the same epochs and iterations, the same seed), then predict the
same held-out cases (without test-time mirroring, to keep the bench short), scored against their dense labels (``labelsTs``). Reported: Dice per
class and setting, the ratio sparse / dense of the mean Dice (the issue's target: at least
0.9), and whether any prediction holds the ignore value (it must not).

    python -m bench.sparse [--cases 10] [--test-cases 4] [--epochs 10] [--iterations 25]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench import harness
from toolkit.evaluation.metrics import case_metrics
from toolkit.synthetic import generate_task, make_case
from toolkit.synthetic.anatomy import SPARSE_IGNORE
from toolkit.synthetic.msd import DENSE_TEST_LABELS
from toolkit.workspace import DatasetPaths

IS_BENCHMARK = True
NAME = "sparse"
SEED = 0
CONFIGURATION = "3d_fullres"
CLASSES = {1: "edema", 2: "core"}
TARGET_RATIO = 0.9


def _toolkit(args: list, log: Path) -> None:
    m = harness.measure([sys.executable, "-m", "toolkit", *map(str, args)], log).check()
    harness.log(f"{log.stem}: {m.wall_s:.0f} s")


def _densify(paths: DatasetPaths, n_cases: int, shape: tuple[int, ...]) -> None:
    """Replace each training label by the dense one of the same synthetic case."""
    for index in range(n_cases):
        case = make_case("sparse", index, SEED, shape)
        label_path = paths.labels_tr / f"synthsparse_{index + 1:03d}.nii.gz"
        sparse = sitk.ReadImage(str(label_path))
        dense = sitk.GetImageFromArray(case.dense_label.astype(np.uint8))
        dense.CopyInformation(sparse)
        sitk.WriteImage(dense, str(label_path), useCompression=True)
    paths.verify_cache.unlink(missing_ok=True)


def _train_and_predict(name: str, ws: Path, test_images: Path, args, logs: Path) -> Path:
    common = ["-w", ws]
    _toolkit(["fingerprint", name, *common], logs / f"{name}_fingerprint.log")
    _toolkit(["plan", name, "--preset", args.plan, *common], logs / f"{name}_plan.log")
    _toolkit(
        ["preprocess", name, "--configs", CONFIGURATION, "-j", "1", *common],
        logs / f"{name}_preprocess.log",
    )
    _toolkit(
        [
            "train",
            name,
            CONFIGURATION,
            "0",
            *common,
            "--epochs",
            args.epochs,
            "--iters-per-epoch",
            args.iterations,
            "--val-iters",
            "2",
            "--device",
            "cpu",
            "--no-validate",
            "--seed",
            SEED,
            "-q",
        ],
        logs / f"{name}_train.log",
    )
    out = ws / f"{name}_predictions"
    shutil.rmtree(out, ignore_errors=True)
    _toolkit(
        [
            "predict",
            "-d",
            name,
            *common,
            "-i",
            test_images,
            "-o",
            out,
            "--config",
            CONFIGURATION,
            "--folds",
            "0",
            "--device",
            "cpu",
            "--no-tta",
            "-q",
        ],
        logs / f"{name}_predict.log",
    )
    return out


def _scores(predictions: Path, truth: Path) -> dict:
    per_case, ignore_voxels = {}, 0
    for reference_path in sorted(truth.glob("*.nii.gz")):
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path)))
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / reference_path.name)))
        ignore_voxels += int(np.count_nonzero(prediction == SPARSE_IGNORE))
        metrics = case_metrics(reference, prediction, list(CLASSES), (3.0, 0.8, 0.8))
        per_case[reference_path.name] = {CLASSES[m.label]: m.dice for m in metrics}
    means = {
        name: float(np.nanmean([d[name] for d in per_case.values()])) for name in CLASSES.values()
    }
    return {
        "dice_per_case": per_case,
        "mean_dice": means,
        "mean_foreground_dice": float(np.mean(list(means.values()))),
        "ignore_voxels_predicted": ignore_voxels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 64, 64))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--plan", default="cpu", help="planner preset (toolkit plan --preset)")
    args = parser.parse_args(argv)
    work = harness.WORK / NAME
    shutil.rmtree(work, ignore_errors=True)
    logs = work / "logs"
    shape = tuple(args.shape)
    source = generate_task(
        "sparse",
        work / "source",
        n_cases=args.cases,
        n_test=args.test_cases,
        seed=SEED,
        shape=shape,
    )
    ws = work / "ws"
    _toolkit(["convert", source, "-w", ws, "--name", "Sparse", "-q"], logs / "convert.log")
    _toolkit(["convert", source, "-w", ws, "--name", "Dense", "-q"], logs / "convert_dense.log")
    _densify(DatasetPaths(ws / "Dense"), args.cases, shape)
    results = {}
    for name in ("Dense", "Sparse"):
        predictions = _train_and_predict(name, ws, source / "imagesTs", args, logs)
        results[name.lower()] = _scores(predictions, source / DENSE_TEST_LABELS)
    ratio = results["sparse"]["mean_foreground_dice"] / max(
        results["dense"]["mean_foreground_dice"], 1e-9
    )
    data = {
        "task": "Task905_SynthSparse (every 4th slice annotated, the rest 'ignore')",
        "configuration": CONFIGURATION,
        "budget": {"epochs": args.epochs, "iterations_per_epoch": args.iterations},
        "cases": {"training": args.cases, "test": args.test_cases, "shape_zyx": list(shape)},
        "plan_preset": args.plan,
        "seed": SEED,
        "results": results,
        "sparse_over_dense": ratio,
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "machine": harness.machine(),
    }
    rows = [
        [
            name,
            *(results[name]["mean_dice"][c] for c in CLASSES.values()),
            results[name]["mean_foreground_dice"],
            results[name]["ignore_voxels_predicted"],
        ]
        for name in ("dense", "sparse")
    ]
    markdown = "\n".join(
        [
            "# Sparse against dense annotation at the same budget",
            "",
            f"`python -m bench.sparse --cases {args.cases} --test-cases {args.test_cases} "
            f"--epochs {args.epochs} --iterations {args.iterations} --plan {args.plan}`: "
            f"{CONFIGURATION} fold 0, {args.epochs} x {args.iterations} iterations, seed {SEED}, "
            f"{args.cases} training cases of {'x'.join(map(str, shape))}; "
            f"Dice on {args.test_cases} held-out cases (predicted without mirroring) against "
            "their dense labels.",
            "",
            harness.markdown_table(
                ["labels", "edema Dice", "core Dice", "mean Dice", "ignore voxels predicted"], rows
            ),
            "",
            f"Sparse / dense mean Dice: **{ratio:.3f}** (target >= {TARGET_RATIO}: "
            f"{'met' if ratio >= TARGET_RATIO else 'not met'}).",
            "",
            f"Machine: {data['machine']['cpus']} CPUs, load {data['machine']['load_average']}, "
            f"{data['machine']['date']}.",
        ]
    )
    harness.write_results(NAME, data, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
