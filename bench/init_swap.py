"""Initial weights swapped between the two trainers: which one carries the early lead?

With the step equal bit for bit (``bench/lockstep.py``) and the batches alike
(``bench/batch_stats.py``, ``bench/crossover.py``), one thing still differs between a
toolkit run and an nnU-Net v2 run of the same seed: the draw of the initial weights (the same
He initialisation, from different random streams). For every seed this trains one epoch
(the early phase, where the reviews saw nnU-Net lead) four ways on the task
``bench/quality.py`` prepared: each trainer from its own initial weights, and each from the
other's. The first epoch's mean training loss tells whether the trainer or the weights make
the difference.

    python -m bench.init_swap --work bench/work/crossover [--seeds 2] [--iterations 40]

writes ``bench/results/init_swap.{json,md}``. Needs nnU-Net v2 (``TOOLKIT_NNUNET_PYTHON`` or
``bench/.venv-nnunet``); the reference half is ``bench/init_swap_reference.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from bench import harness
from toolkit.core.plans import dataset_plans
from toolkit.nets.unet import build_network
from toolkit.training.history import read_log
from toolkit.training.job import run_seed
from toolkit.workspace import TRAINING_LOG, DatasetPaths

NAME = "init_swap"
REFERENCE = harness.BENCH / "init_swap_reference.py"
TASK = "Task905_DeepGrey"


def linked_dataset(source: DatasetPaths, folder: Path) -> DatasetPaths:
    """The dataset seen through ``folder`` (every entry linked but ``models/``)."""
    shutil.rmtree(folder, ignore_errors=True)
    target = folder / source.name
    target.mkdir(parents=True)
    for entry in source.root.iterdir():
        if entry.name != "models":
            (target / entry.name).symlink_to(entry.resolve())
    return DatasetPaths(target)


def toolkit_initial_weights(paths: DatasetPaths, seed: int, out: Path) -> Path:
    """The toolkit's initial weights of ``seed`` (as ``toolkit train --seed`` draws them)."""
    plans = dataset_plans(paths)
    torch.manual_seed(run_seed(seed, "3d_fullres", 0))
    network = build_network(plans, plans.configuration("3d_fullres"))
    torch.save(network.state_dict(), out)
    return out


def toolkit_epoch(
    paths: DatasetPaths, work: Path, seed: int, args, pretrained: Path | None
) -> float:
    """One epoch of ``toolkit train`` (its own data of ``seed``); the mean training loss."""
    ds = linked_dataset(paths, work / "ws")
    command = [sys.executable, "-m", "toolkit", "train", ds.name, "3d_fullres", "0"]
    command += ["-w", ds.root.parent, "--epochs", 1, "--iters-per-epoch", args.iterations]
    command += ["--val-iters", max(1, args.iterations // 5), "--seed", seed, "--device", "cpu"]
    command += ["--precision", "fp32", "--no-validate", "-q"]
    if pretrained is not None:
        command += ["--pretrained", pretrained]
    harness.measure([str(c) for c in command], work / "toolkit.log").check()
    return read_log(ds.fold_dir("3d_fullres", 0) / TRAINING_LOG)[0].train_loss


def reference(args, seed: int, work: Path, *extra) -> dict:
    command = [str(harness.ensure_nnunet()), str(REFERENCE), "--root", args.work / "nnunet"]
    command += ["--scratch", work, "--seed", seed, "--iterations", args.iterations, *extra]
    m = harness.measure([str(c) for c in command], work / "nnunet.log").check()
    line = [x for x in Path(m.log).read_text().splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def render(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Initial weights swapped between the trainers",
        "",
        f"Machine: {m['cpus']} CPUs, load {m['load_average']}, {m['date']}. Task "
        f"`{TASK}` as `bench/quality.py` prepared it (nnU-Net v2's plan with the `cpu` preset "
        f"network, 16-128 features, fp32, one thread). One epoch of {data['iterations']} "
        "iterations per run (learning rate 0.01); the mean training loss of that epoch. Each "
        "trainer draws its own batches (the toolkit's of `--seed`, nnU-Net's unseeded).",
        "",
    ]
    rows = [
        [
            r["seed"],
            f"{r['nnunet_own']:.3f}",
            f"{r['toolkit_with_nnunet_init']:.3f}",
            f"{r['toolkit_own']:.3f}",
            f"{r['nnunet_with_toolkit_init']:.3f}",
        ]
        for r in data["runs"]
    ]
    lines.append(
        harness.markdown_table(
            [
                "seed",
                "nnU-Net, its initial weights",
                "toolkit, nnU-Net's initial weights",
                "toolkit, its initial weights",
                "nnU-Net, the toolkit's initial weights",
            ],
            rows,
        )
    )
    lines += [
        "",
        "The first two columns start from the same weights (nnU-Net's draw of the seed), the "
        "last two from the same weights (the toolkit's draw); each pair has one run of each "
        "trainer.",
        "",
        f"Reproduce: `python -m bench.init_swap --work {data['work']} --seeds {data['seeds']} "
        f"--iterations {data['iterations']}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="prepared by bench.quality")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TOOLKIT_QUIET", "1")
    paths = DatasetPaths(args.work / "ws" / TASK)
    scratch = args.work / "init_swap"
    runs = []
    for seed in range(args.seeds):
        folder = scratch / f"seed_{seed}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        theirs = folder / "nnunet_init.pth"
        own = reference(args, seed, folder / "a", "--save-initial", theirs)
        ours = toolkit_initial_weights(paths, seed, folder / "toolkit_init.pt")
        swapped = reference(args, seed, folder / "b", "--initial-weights", ours)
        runs.append(
            {
                "seed": seed,
                "nnunet_own": own["train_loss"][0],
                "nnunet_with_toolkit_init": swapped["train_loss"][0],
                "toolkit_own": toolkit_epoch(paths, folder / "c", seed, args, None),
                "toolkit_with_nnunet_init": toolkit_epoch(paths, folder / "d", seed, args, theirs),
            }
        )
        data = {
            "machine": harness.machine(),
            "work": str(args.work),
            "seeds": args.seeds,
            "iterations": args.iterations,
            "runs": runs,
        }
        harness.write_results(NAME, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
