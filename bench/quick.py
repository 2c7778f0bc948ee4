"""The ``quick`` preset on real anatomy, as a new user runs it: figures per class and wall time.

On the task built from real brain anatomy (:mod:`bench.anatomy`: four deep grey structures
of the Colin 27 brain under random smooth deformations, 20 training cases, 6 held out) this
runs the user's commands, each timed::

    toolkit convert Task905_DeepGrey
    toolkit run-all Task905_DeepGrey --preset quick --device cpu
    toolkit predict -d Task905_DeepGrey -i imagesTs -o ...   (the selection, its postprocessing)

(``quick`` is a 30 min time budget since ``run-all --time-budget``; the results in
``bench/results/quick.md`` were measured with its earlier fixed 20 x 150 iterations, which
``--epochs 20 --iters-per-epoch 150`` still trains; ``bench/budget.py`` measures budgets)
and scores the held-out predictions against their references (Dice per class, with a
bootstrap interval of the mean over cases). The issue's target: a mean Dice of at least 0.75
over the classes on held-out cases, convert + run-all in under 45 minutes on 2 cores.

    python -m bench.quick [--cases 20] [--test-cases 6] [--tta]

Run it alone on the machine: the wall time is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench import anatomy, harness
from bench.quality import bootstrap_interval, case_dice, claim_work_folder
from toolkit.pipeline.presets import get_preset

NAME = "quick"
TARGET_DICE = 0.75
TARGET_MINUTES = 45


def timed(command: list, log: Path) -> float:
    m = harness.measure([str(c) for c in command], log).check()
    return m.wall_s


def training_record(dataset: Path) -> dict:
    """The fold's speed and the preset's budget, from the files run-all wrote."""
    out = {}
    for log in sorted((dataset / "models").glob("*/fold_*/log.jsonl")):
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        epochs = [e for e in epochs if "epoch" in e]
        key = f"{log.parent.parent.name}/{log.parent.name}"
        out[key] = {
            "epochs": len(epochs),
            "last_pseudo_dice": epochs[-1].get("pseudo_dice") if epochs else None,
            "last_ema_pseudo_dice": epochs[-1].get("ema_pseudo_dice") if epochs else None,
            "train_seconds": round(sum(e.get("epoch_time_s", 0.0) for e in epochs), 1),
        }
    return out


def render(data: dict) -> str:
    names = data["class_names"]
    s = data["summary"]
    minutes = data["seconds"]["convert"] / 60 + data["seconds"]["run_all"] / 60
    preset = data["preset"]
    lines = [
        "# The `quick` preset on real anatomy",
        "",
        f"Machine: {data['machine']['cpus']} CPUs, {data['machine']['date']}"
        + (f" ({data['conditions']})" if data.get("conditions") else "")
        + ". Task: "
        f"`{anatomy.TASK}` from `bench/anatomy.py` ({data['cases']} training cases, "
        f"{data['test_cases']} held out, about 74 x 90 x 102 voxels at 1 mm; four deep grey "
        "structures of the Colin 27 brain (Debian's `mricron-data`) under random smooth "
        "deformations, intensity bias, gamma and noise).",
        "",
        f"Preset `quick`: {preset['description']}.",
        "",
        "| step | minutes |",
        "|---|---|",
        f"| `toolkit convert` | {data['seconds']['convert'] / 60:.1f} |",
        f"| `toolkit run-all --preset quick` (verify ... select) | "
        f"{data['seconds']['run_all'] / 60:.1f} |",
        f"| **model ready (convert + run-all)** | **{minutes:.1f}** (target < {TARGET_MINUTES}) |",
        f"| `toolkit predict` of {data['test_cases']} held-out cases"
        f" ({'with' if data['tta'] else 'without'} mirroring) | "
        f"{data['seconds']['predict'] / 60:.1f} |",
        "",
        f"Held-out Dice (the selection, with its postprocessing; mean over "
        f"{data['test_cases']} cases, 95% bootstrap interval):",
        "",
    ]
    rows = [
        [
            n,
            s["class_dice"][n],
            f"[{s['class_interval'][n][0]:.3f}, {s['class_interval'][n][1]:.3f}]",
        ]
        for n in names
    ]
    rows.append(
        ["**mean**", s["mean_dice"], f"[{s['mean_interval'][0]:.3f}, {s['mean_interval'][1]:.3f}]"]
    )
    lines.append(harness.markdown_table(["class", "Dice", "interval"], rows))
    verdict = "meets" if s["mean_dice"] >= TARGET_DICE and minutes < TARGET_MINUTES else "misses"
    lines += [
        "",
        f"Target (mean Dice >= {TARGET_DICE} in < {TARGET_MINUTES} min): {verdict} it.",
        "",
        f"Training: {json.dumps(data['training'])}",
        "",
        "Reproduce: `python -m bench.quick"
        + (" --tta" if data["tta"] else "")
        + f" --cases {data['cases']} --test-cases {data['test_cases']}`.",
    ]
    return "\n".join(lines)


def summarize(dice: dict, names: list[str]) -> dict:
    table = np.array(list(dice.values()))  # case x class
    means = np.nanmean(table, axis=1)
    return {
        "class_dice": {n: float(np.nanmean(table[:, i])) for i, n in enumerate(names)},
        "class_interval": {
            n: bootstrap_interval(table[:, i][~np.isnan(table[:, i])]) for i, n in enumerate(names)
        },
        "mean_dice": float(means.mean()),
        "mean_interval": bootstrap_interval(means),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="the task generator's seed")
    parser.add_argument(
        "--tta", action="store_true", help="predict the held-out cases with mirroring"
    )
    parser.add_argument(
        "--conditions", default="", help="what else ran on the machine, said in the report"
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads((harness.RESULTS / f"{NAME}.json").read_text())
        harness.write_results(NAME, data, render(data))
        return 0
    os.environ.setdefault("TOOLKIT_QUIET", "1")
    work = harness.WORK / NAME
    claim_work_folder(harness.WORK / f"{NAME}.pid")
    shutil.rmtree(work, ignore_errors=True)
    source = anatomy.write_task(work / "source", args.cases, args.test_cases, args.seed)
    workspace = work / "workspace"
    toolkit = [sys.executable, "-m", "toolkit"]
    logs = work / "logs"
    seconds = {}
    start = time.perf_counter()
    seconds["convert"] = timed([*toolkit, "convert", source, "-w", workspace], logs / "convert.log")
    seconds["run_all"] = timed(
        [
            *toolkit,
            "run-all",
            anatomy.TASK,
            "-w",
            workspace,
            "--preset",
            "quick",
            "--device",
            "cpu",
        ],
        logs / "run_all.log",
    )
    predictions = work / "predictions"
    predict = [*toolkit, "predict", "-d", anatomy.TASK, "-w", workspace, "-i", source / "imagesTs"]
    predict += ["-o", predictions, "--device", "cpu", "-q"] + ([] if args.tta else ["--no-tta"])
    seconds["predict"] = timed(predict, logs / "predict.log")
    seconds["total"] = time.perf_counter() - start
    names = list(anatomy.STRUCTURES)
    dice = case_dice(predictions, source / "labelsTs", list(range(1, len(names) + 1)))
    preset = get_preset("quick")
    data = {
        "machine": harness.machine(),
        "cases": args.cases,
        "test_cases": args.test_cases,
        "seed": args.seed,
        "tta": args.tta,
        "conditions": args.conditions,
        "preset": {
            "description": preset.description,
            "epochs": preset.epochs,
            "iterations_per_epoch": preset.iters_per_epoch,
            "folds": preset.folds,
            "configs": preset.configs,
            "validation_mirroring": preset.validation_mirroring,
        },
        "plans": json.loads((workspace / anatomy.TASK / "plans.json").read_text())[
            "configurations"
        ]["3d_fullres"],
        "selection": json.loads((workspace / anatomy.TASK / "selection.json").read_text()),
        "training": training_record(workspace / anatomy.TASK),
        "seconds": seconds,
        "class_names": names,
        "dice": dice,
        "summary": summarize(dice, names),
    }
    harness.write_results(NAME, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
