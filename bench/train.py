"""Training iterations per second, ours vs nnU-Net v2, on the same plan: ``python -m bench.train``.

Both tools train the same network (nnU-Net v2's plan of the synthetic MR task, converted to
ours with :func:`toolkit.nets.nnunet_v2.convert_plans`: same patch, batch size, topology,
features) on the same cases, each with its own preprocessing and data pipeline. Measured
per iteration after a warm-up: the time the loop waits for its batch, and the step
(forward, loss, backward, optimiser, loss back on the CPU). Ours also reports where a
batch's preparation goes (sampling crops from the memory maps, moving to the device and
augmenting there; done in a background thread, so it only costs the loop what it waits).
Peak memory: resident set of the process, and on CUDA the largest GPU allocation.

    python -m bench.train                          # CPU, this machine
    python -m bench.train --device cuda            # GPU (see --help for a machine without internet)
    python -m bench.train --prepare-only           # data and plans only (to carry elsewhere)
    python -m bench.train --device cuda --task ct --shape 160 192 192 --cases 8   # a realistic plan
    python -m bench.train --planner resenc-m       # the residual-encoder U-Net M, both tools

The reference runs in its own venv (``bench/.venv-nnunet``, made by the harness), or with
``--nnunet-python`` (e.g. a GPU machine's python with nnU-Net's wheels installed).
``--planner resenc-m|l|xl`` plans both with nnU-Net v2's residual-encoder preset
(``nnUNetPlannerResEnc*``) instead of its default planner.
Writes ``bench/results/train_<device>[_<task>_<shape>][_<planner>].json`` and ``.md``; data in
``bench/work/train_<task>[_<shape>][_<planner>]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import (
    TIME,
    WORK,
    NnunetFolders,
    ensure_nnunet,
    log,
    machine,
    markdown_table,
    measure,
    write_results,
)
from toolkit.core.device import cpu_has_native_bf16

IS_BENCHMARK = True

DATASET_ID = 990
TASKS = {"mr": "Task901_SynthMR", "ct": "Task902_SynthCT"}
CONFIGURATION = "3d_fullres"


def work_dir(task: str = "mr", shape: list[int] | None = None, planner: str = "default") -> Path:
    suffix = "" if planner == "default" else f"_{planner}"
    if task == "mr" and shape is None:
        return WORK / f"train{suffix}"
    tag = "" if shape is None else "_" + "x".join(map(str, shape))
    return WORK / f"train_{task}{tag}{suffix}"


def reference_planner(planner: str) -> tuple[str, str]:
    """nnU-Net v2's planner class and plans identifier for one of our planners."""
    from toolkit.planning.planners import get_planner

    spec = get_planner(planner)
    return spec.reproduces, spec.plans_name


def prepare(
    work: Path,
    task: str,
    cases: int,
    shape: list[int] | None,
    nnunet_python: Path,
    planner: str = "default",
) -> tuple[Path, NnunetFolders]:
    """Synthetic task -> our workspace and nnU-Net's folders; nnU-Net's plan converted to ours."""
    from bench.harness import export_nnunet_raw, nnunet_dataset_name
    from toolkit.convert.stage import convert_task
    from toolkit.nets.nnunet_v2 import convert_plans
    from toolkit.preprocessing.stage import preprocess_dataset
    from toolkit.synthetic import generate_task
    from toolkit.workspace import DatasetPaths

    paths = DatasetPaths(work / "workspace" / TASKS[task])
    folders = NnunetFolders(work / "nnunet")
    if not paths.dataset_json.is_file():
        source = generate_task(
            task, work / "source", n_cases=cases, seed=0, shape=shape, force=True
        )
        convert_task(source, paths, force=True, quiet=True)
    name = nnunet_dataset_name(DATASET_ID, paths.name)
    planner_class, plans_name = reference_planner(planner)
    nnunet_plans = folders.preprocessed / name / f"{plans_name}.json"
    if not nnunet_plans.is_file():
        export_nnunet_raw(paths, folders, DATASET_ID)
        # the entry point of nnUNetv2_plan_and_preprocess, through whichever python holds nnunetv2
        entry = (
            "import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as main; sys.argv[0] = 'nnUNetv2_plan_and_preprocess'; main()"
        )
        command = [
            str(nnunet_python),
            "-c",
            entry,
            "-d",
            str(DATASET_ID),
            "-c",
            CONFIGURATION,
            "-np",
            str(min(8, os.cpu_count() or 2)),
            "-pl",
            planner_class,
        ]
        log("nnU-Net v2: fingerprint, plan, preprocess")
        _measure(command, work / "logs" / "nnunet_prepare.log", folders.env())
    plans = convert_plans(
        json.loads(nnunet_plans.read_text()),
        json.loads(paths.dataset_json.read_text()),
        nnunet_plans,
    )
    plans.configurations = {CONFIGURATION: plans.configuration(CONFIGURATION)}
    plans.configurations[CONFIGURATION].data_identifier = CONFIGURATION
    plans.save(paths.plans_json)
    log("ours: preprocess with nnU-Net's plan")
    preprocess_dataset(paths, [CONFIGURATION], workers=min(8, os.cpu_count() or 2), quiet=True)
    return paths.root, folders


# our side: runs in a subprocess (python -m bench.train --measure-ours ...) ------------------


def measure_ours(
    dataset: Path,
    device_name: str,
    iterations: int,
    warmup: int,
    precision: str,
    threads: int | None,
    compile_network: bool = False,
) -> dict:
    import torch

    from toolkit.training.distributed import DistContext
    from toolkit.training.job import TrainOptions, prepare
    from toolkit.training.loader import TRAIN, BatchKey, Prefetcher
    from toolkit.training.schedule import Schedule
    from toolkit.training.trainer import batch_makers, build_parts, train_step
    from toolkit.workspace import DatasetPaths

    options = TrainOptions(
        schedule=Schedule(),
        device=device_name,
        precision=precision,
        validate=False,
        quiet=True,
        loader_threads=threads,
        compile=compile_network,
    )
    job = prepare(DatasetPaths(dataset), CONFIGURATION, 0, options)
    device = job.device
    torch.manual_seed(0)
    parts = build_parts(job, DistContext(), device)
    # the breakdown needs each batch's preparation timed to its end on the device
    parts.train_maker, _ = batch_makers(job, DistContext(), device, synchronize_timings=True)
    total = warmup + iterations
    keys = (BatchKey(0, TRAIN, i) for i in range(total))
    waits, steps, samples, augments = [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    parts.model.train()
    threads = options.threads_for(device)
    with Prefetcher(parts.train_maker, keys, depth=3, threads=threads) as batches:
        start = None
        for i in range(total):
            if i == warmup:
                start = time.perf_counter()
            t0 = time.perf_counter()
            batch = next(batches)
            batch.wait()
            t1 = time.perf_counter()
            train_step(parts, batch, 12.0)  # returns the loss as a float: synchronises
            t2 = time.perf_counter()
            if i >= warmup:
                waits.append(t1 - t0)
                steps.append(t2 - t1)
                samples.append(batch.timings["sample_s"])
                augments.append(batch.timings["augment_s"])
        elapsed = time.perf_counter() - start
    cfg = job.configuration
    return {
        "tool": "toolkit",
        "device": str(device),
        "precision": parts.precision,
        "loader_threads": threads,
        "compiled": compile_network,
        "patch_size": cfg.patch_size,
        "batch_size": cfg.batch_size,
        "network": cfg.architecture.network,
        "iterations": iterations,
        "iterations_per_s": iterations / elapsed,
        "seconds_per_iteration": statistics.median(
            [w + s for w, s in zip(waits, steps, strict=True)]
        ),
        "data_wait_s": statistics.median(waits),
        "step_s": statistics.median(steps),
        "sample_s": statistics.median(samples),
        "augment_s": statistics.median(augments),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "parameters": sum(p.numel() for p in parts.network.parameters()),
        "torch": torch.__version__,
    }


def _measure(command: list[str], logfile: Path, env: dict) -> tuple[str, float]:
    """The command's output and peak resident memory (GNU time where installed, else rusage)."""
    if Path(TIME).exists():
        m = measure(command, logfile, env=env).check()
        return Path(m.log).read_text(), m.peak_rss_mb
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return done.stdout, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result line in:\n{text[-2000:]}")


def run_ours(dataset: Path, args: argparse.Namespace, precision: str) -> dict:
    log(f"ours: {args.iterations} iterations on {args.device} ({precision})")
    command = [
        sys.executable,
        "-m",
        "bench.train",
        "--measure-ours",
        str(dataset),
        "--device",
        args.device,
        "--iterations",
        str(args.iterations),
        "--warmup",
        str(args.warmup),
        "--precision",
        precision,
        *(["--threads", str(args.threads)] if args.threads else []),
        *(["--compile"] if args.compile else []),
    ]
    logfile = (
        args.work
        / "logs"
        / f"ours_{args.device}_{precision}{'_compiled' if args.compile else ''}.log"
    )
    output, peak = _measure(command, logfile, {**os.environ, "TOOLKIT_QUIET": "1"})
    result = _json_line(output)
    result["process_peak_rss_mb"] = peak
    return result


def run_nnunet(
    python: Path, folders: NnunetFolders, args: argparse.Namespace, workers: int
) -> dict:
    log(
        f"nnU-Net v2: {args.iterations} iterations on {args.device}, {workers} augmentation workers"
    )
    script = Path(__file__).with_name("nnunet_train_steps.py")
    command = [
        str(python),
        str(script),
        "--root",
        str(folders.root),
        "--dataset-id",
        str(DATASET_ID),
        "--configuration",
        CONFIGURATION,
        "--plans",
        reference_planner(args.planner)[1],
        "--iterations",
        str(args.iterations),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
        "--workers",
        str(workers),
        *(["--compile"] if args.compile else []),
    ]
    logfile = (
        args.work
        / "logs"
        / f"nnunet_{args.device}_{workers}{'_compiled' if args.compile else ''}.log"
    )
    output, peak = _measure(command, logfile, folders.env())
    result = _json_line(output)
    result["process_peak_rss_mb"] = peak
    return result


def median_run(repeats: list[dict]) -> dict:
    """The repeat with the median iterations per second, with every repeat's figure kept."""
    ordered = sorted(repeats, key=lambda r: r["iterations_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats_iterations_per_s"] = [r["iterations_per_s"] for r in repeats]
    return chosen


def report(results: list[dict], args: argparse.Namespace) -> str:
    reference = next((r for r in results if r["tool"] == "nnU-Net v2"), None)
    rows = []
    for r in results:
        name = (
            r["tool"]
            + (
                f", {r['augmentation_workers']} aug. workers"
                if "augmentation_workers" in r
                else f", {r['precision']}"
            )
            + (", compiled" if r.get("compiled") else "")
        )
        speedup = (
            r["iterations_per_s"] / reference["iterations_per_s"] if reference else float("nan")
        )
        rows.append(
            [
                name,
                r["iterations_per_s"],
                f"{speedup:.2f}x",
                r["seconds_per_iteration"],
                r["data_wait_s"],
                r.get("augment_s", "-") if "augment_s" in r else "-",
                r["step_s"],
                r["process_peak_rss_mb"],
                "-" if r.get("peak_gpu_mb") is None else r["peak_gpu_mb"],
            ]
        )
    first = results[0]
    header = (
        f"# Training iterations, ours vs nnU-Net v2 ({args.device})\n\n"
        f"Same plan (nnU-Net v2's {CONFIGURATION} for {TASKS[args.task]} by {reference_planner(args.planner)[0]}, "
        f"network {first.get('network', 'plain')}, patch {first['patch_size']}, batch {first['batch_size']}, "
        f"{first['parameters']:,} parameters), {args.iterations} iterations after {args.warmup} warm-up, medians per iteration; "
        f"each run is the median of {args.repeats} alternating repeat(s) (every repeat in the JSON). "
        "`wait` is the time the loop waited for its batch; `augment` (ours) is the batch's transfer and augmentation on the "
        "device, done in a background thread; `step` is forward + loss + backward + optimiser.\n\n"
    )
    table = markdown_table(
        [
            "run",
            "iterations/s",
            "vs nnU-Net",
            "s/iteration",
            "wait s",
            "augment s",
            "step s",
            "peak RSS MB",
            "peak GPU MB",
        ],
        rows,
    )
    if args.device == "cpu":
        header += (
            "This CPU computes bf16 natively (AVX-512 BF16 or AMX): `auto` is bf16 autocast, "
            "fp32 measured beside it.\n\n"
            if getattr(args, "native_bf16", False)
            else "This CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag; torch would "
            "emulate it, many times slower): `auto` is fp32, and no bf16 row is measured.\n\n"
        )
    return header + table + f"\n\nMachine: {json.dumps(machine())}\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="Measured iterations (default: 6 on the CPU, 60 on CUDA).",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="Iterations before measuring (default: 2 on the CPU, 15 on CUDA).",
    )
    parser.add_argument(
        "--task",
        default="mr",
        choices=sorted(TASKS),
        help="Synthetic task (toolkit/synthetic/).",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="Case shape (default: the task's); larger shapes give the larger plans of real tasks.",
    )
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument(
        "--planner",
        default="default",
        choices=("default", "resenc-m", "resenc-l", "resenc-xl"),
        help="Whose plan both tools train: nnU-Net v2's default planner or a residual-encoder preset.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Our background batch threads (default: the trainer's, 1 on the CPU, 2 on CUDA).",
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="Ours: auto (fp16 on CUDA; on the CPU bf16 where native, else fp32; default: auto, and fp32 beside it on a CPU with native bf16), fp32, bf16 or fp16.",
    )
    parser.add_argument(
        "--nnunet-workers",
        type=int,
        nargs="*",
        default=None,
        help="nnU-Net's nnUNet_n_proc_DA values to measure (default: 0 and 2 on the CPU, 12 on CUDA).",
    )
    parser.add_argument(
        "--nnunet-python",
        default=None,
        help="A Python with nnunetv2 (default: the harness's bench/.venv-nnunet).",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="Both tools with torch.compile (nnU-Net v2's default on CUDA; off by default here).",
    )
    parser.add_argument("--skip-nnunet", action="store_true")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="Write the data, plans and preprocessed cases, then stop.",
    )
    parser.add_argument("--measure-ours", metavar="DATASET", help=argparse.SUPPRESS)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Alternating repeats of every run, the median reported (default: 3 on the CPU, 1 on CUDA).",
    )
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.iterations = args.iterations or (60 if gpu else 6)
    args.warmup = args.warmup if args.warmup is not None else (15 if gpu else 2)
    args.repeats = args.repeats or (1 if gpu else 3)

    if args.measure_ours:
        print(
            json.dumps(
                measure_ours(
                    Path(args.measure_ours),
                    args.device,
                    args.iterations,
                    args.warmup,
                    args.precision or "auto",
                    args.threads,
                    args.compile,
                )
            ),
            flush=True,
        )
        return 0

    nnunet_python = Path(args.nnunet_python) if args.nnunet_python else None
    if nnunet_python is None and not args.skip_nnunet:
        nnunet_python = ensure_nnunet()
    args.work = work_dir(args.task, args.shape, args.planner)
    dataset = args.work / "workspace" / TASKS[args.task]
    folders = NnunetFolders(args.work / "nnunet")
    if not (dataset / "preprocessed" / CONFIGURATION).is_dir() or args.prepare_only:
        if nnunet_python is None:
            raise SystemExit(
                "preparing the data needs nnU-Net v2 (its plan is the common plan): drop --skip-nnunet"
            )
        dataset, folders = prepare(
            args.work, args.task, args.cases, args.shape, nnunet_python, args.planner
        )
    if args.prepare_only:
        log(f"prepared {dataset} and {folders.root}")
        return 0

    # auto is bf16 autocast on a CPU with native bf16: fp32 is then measured beside it
    native = args.device == "cpu" and cpu_has_native_bf16()
    precisions = [args.precision] if args.precision else (["auto", "fp32"] if native else ["auto"])
    args.native_bf16 = native
    workers = (
        []
        if args.skip_nnunet
        else (args.nnunet_workers if args.nnunet_workers is not None else ([12] if gpu else [0, 2]))
    )
    # the runs alternate, repeat after repeat, so that a change in the machine's load hits both tools
    runs: list[list[dict]] = [[] for _ in range(len(precisions) + len(workers))]
    for _ in range(args.repeats):
        for k, precision in enumerate(precisions):
            runs[k].append(run_ours(dataset, args, precision))
        for k, w in enumerate(workers):
            runs[len(precisions) + k].append(run_nnunet(nnunet_python, folders, args, w))
    results = [median_run(r) for r in runs]
    markdown = report(results, args)
    name = (
        f"train_{args.device}"
        + ("" if args.work.name == "train" else "_" + args.work.name.removeprefix("train_"))
        + ("_compiled" if args.compile else "")
    )
    write_results(name, {"machine": machine(), "results": results}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
