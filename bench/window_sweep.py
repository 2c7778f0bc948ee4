"""The torch sliding window before and after it became one implementation for every runtime.

``python -m bench.window_sweep [--before REV]`` plans the demo task (``toolkit demo-data
--task mr``, 12 cases, as ``make demo`` does), builds its ``3d_fullres`` network with random
weights (speed does not depend on them; ``--width-divisor`` narrows it, so that what the
sliding window itself costs, stacking, flipping and accumulating, weighs more against the
convolutions) and sweeps one volume of 27 windows with mirroring, on the CPU in float32 on
one torch thread, timing each sweep's CPU time (``time.process_time``: on a shared machine the
wall time measures the neighbours) and wall time: ``toolkit.inference.sliding_window`` of this checkout
against the same module of revision ``--before`` (default ``main``; loaded from git, the rest
of the toolkit being this checkout's), interleaved (A B A B ...) so that a shared machine's
load falls on both alike. The two results must be equal. Results:
``bench/results/window_sweep.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from bench import harness

WORK = harness.WORK / "window_sweep"
MODULE = "toolkit/inference/sliding_window.py"


def module_at(revision: str):
    """``toolkit.inference.sliding_window`` as it was at ``revision``."""
    source = subprocess.run(
        ["git", "-C", str(harness.ROOT), "show", f"{revision}:{MODULE}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = WORK / f"sliding_window_{revision.replace('/', '_')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("sliding_window_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def demo_plans():
    from toolkit.core.plans import dataset_plans
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths(WORK / "workspace" / "Task901_SynthMR")
    if not paths.plans_json.is_file():
        toolkit = [sys.executable, "-m", "toolkit"]
        harness.log("demo task: demo-data, convert, fingerprint, plan")
        for args in (
            ["demo-data", str(WORK / "source"), "--task", "mr", "--cases", "12", "--force"],
            ["convert", str(WORK / "source" / "Task901_SynthMR"), "-w", str(WORK / "workspace")]
            + ["--force"],
            ["fingerprint", "Task901_SynthMR", "-w", str(WORK / "workspace")],
            ["plan", "Task901_SynthMR", "-w", str(WORK / "workspace")],
        ):
            subprocess.run(
                [*toolkit, *args],
                check=True,
                cwd=harness.ROOT,
                env={**os.environ, "TOOLKIT_QUIET": "1"},
            )
    return dataset_plans(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width-divisor", type=int, default=8)
    args = parser.parse_args(argv)

    import torch

    from toolkit.inference import sliding_window as after
    from toolkit.nets.unet import build_network

    before = module_at(args.before)
    data: dict = {"machine": harness.machine(), "before": args.before}
    plans = demo_plans()
    config = plans.configuration("3d_fullres")
    architecture = dataclasses.replace(
        config.architecture,
        features_per_stage=[
            max(1, f // args.width_divisor) for f in config.architecture.features_per_stage
        ],
    )
    config = dataclasses.replace(config, architecture=architecture)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = build_network(plans, config, deep_supervision=False).eval()
    patch = tuple(int(p) for p in config.patch_size)
    shape = tuple(int(s * 1.6) for s in patch)  # 2 windows per axis at step 0.5 -> 27 windows
    rng = np.random.default_rng(0)
    volume = torch.from_numpy(
        rng.normal(size=(plans.num_input_channels, *shape)).astype(np.float32)
    )
    cpu = torch.device("cpu")
    times: dict[str, list[float]] = {"before": [], "after": []}
    wall: dict[str, list[float]] = {"before": [], "after": []}
    results = {}
    for r in range(args.repeats):
        for name, module in (("before", before), ("after", after)):
            settings = module.WindowSettings(patch, 0.5, (0, 1, 2), 1, "fp32")
            start, cpu_start = time.perf_counter(), time.process_time()
            out = module.sliding_window_logits(
                [network], volume, plans.num_classes, settings, cpu, cpu
            )
            times[name].append(time.process_time() - cpu_start)
            wall[name].append(time.perf_counter() - start)
            results[name] = torch.stack(out).numpy()
            harness.log(f"run {r + 1}: {name} {times[name][-1]:.2f} s CPU")
    difference = float(np.abs(results["before"] - results["after"]).max())
    data.update(
        {
            "patch": list(patch),
            "volume": list(shape),
            "features": list(config.architecture.features_per_stage),
            "mirror_axes": [0, 1, 2],
            "torch_threads": torch.get_num_threads(),
            "cpu_seconds": times,
            "wall_seconds": wall,
            "width_divisor": args.width_divisor,
            "median_before": statistics.median(times["before"]),
            "median_after": statistics.median(times["after"]),
            "max_abs_difference": difference,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
        }
    )
    harness.write_results("window_sweep", data, markdown(data))
    print(markdown(data))
    return 0 if difference < 1e-5 else 1


def markdown(data: dict) -> str:
    m = data["machine"]
    ratio = data["median_after"] / data["median_before"]
    return (
        "# The torch sliding window before and after the shared implementation\n\n"
        f"Machine: {m['cpus']} CPUs, load average {m['load_average']} at start and "
        f"{data['load_average_end']} at the end (a shared machine), {m['date']}; torch on "
        f"{data['torch_threads']} thread, float32, CPU.\n\n"
        f"Demo task (`toolkit demo-data --task mr`), its 3d_fullres plan: patch {data['patch']}, "
        f"features {data['features']} (the plan's divided by {data['width_divisor']}), random "
        f"weights; one volume of {data['volume']} (27 windows) with mirroring over 3 axes (8 "
        "forward passes per window), interleaved runs; CPU seconds of the process per sweep "
        "(wall seconds beside them).\n\n"
        + harness.markdown_table(
            ["sliding window", "CPU s per run", "wall s per run", "median CPU s"],
            [
                [
                    f"`{data['before']}`",
                    [round(v, 2) for v in data["cpu_seconds"]["before"]],
                    [round(v, 1) for v in data["wall_seconds"]["before"]],
                    data["median_before"],
                ],
                [
                    "this checkout",
                    [round(v, 2) for v in data["cpu_seconds"]["after"]],
                    [round(v, 1) for v in data["wall_seconds"]["after"]],
                    data["median_after"],
                ],
            ],
        )
        + f"\n\nAfter / before: {ratio:.3f}. Largest difference of the logits: "
        f"{data['max_abs_difference']:.2e}.\n"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
