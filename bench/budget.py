"""``run-all --time-budget`` on real anatomy: held-out Dice and wall time per budget.

On the task built from real brain anatomy (:mod:`bench.anatomy`: four deep grey structures
of the Colin 27 brain, 20 training cases, 6 held out) each budget runs, in a fresh workspace,
what a user runs::

    toolkit convert Task905_DeepGrey
    toolkit run-all Task905_DeepGrey --preset quick --time-budget 30m --device cpu
    toolkit predict -d Task905_DeepGrey -i imagesTs -o ...   (the selection, its postprocessing)

and scores the held-out predictions (Dice per class, bootstrap interval of the mean over
cases). The wall time is run-all's, from the command's start to ``selection.json`` (what the
budget promises). The machine's load is sampled every 30 s while run-all runs and recorded
with the CPU's flags and the precision the calibration used: on a shared machine the load
varies, which is what re-planning is for.

    python -m bench.budget --budgets 30m [--budgets 10m,20m,60m] [--cases 20] [--test-cases 6]
    python -m bench.budget --budgets 30m --isa avx2 --tag avx2   # an AVX2-only CPU, emulated

``--isa avx2`` stands in for a CPU without AVX-512 where none is at hand: torch's own kernels
(``ATEN_CPU_CAPABILITY=avx2``) and oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA=AVX2``) are
held to AVX2, and run-all trains in fp32, which ``--precision auto`` picks on such a CPU (no
native bf16). The cores, clock and memory stay this machine's, so it is a proxy, said so in
the results.

Each budget's result is merged into ``bench/results/budget.json`` (a budget run again
replaces its entry), and the Markdown is rewritten from all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from bench import anatomy, harness
from bench.quality import case_dice
from bench.quick import summarize
from toolkit.core.device import cpu_flags
from toolkit.pipeline.budget import parse_duration

NAME = "budget"
TARGET_DICE = 0.80
LOAD_EVERY_S = 30.0
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
# --isa: the instruction set torch and oneDNN are held to, and the precision that goes with it
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
ISA_PRECISION = {"avx2": "fp32"}


class LoadSampler:
    """The 1-minute load average every :data:`LOAD_EVERY_S` seconds, in a thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(round(os.getloadavg()[0], 2))
            self._stop.wait(LOAD_EVERY_S)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wall_seconds(report: Path) -> float:
    """The wall time in a ``/usr/bin/time -v`` report."""
    return harness._parse_time(report.read_text())[0]


def run_budget(budget: str, args: argparse.Namespace) -> dict:
    work = harness.WORK / NAME / budget
    workspace = work / "workspace"
    toolkit = [sys.executable, "-m", "toolkit"]
    logs = work / "logs"
    env = {**os.environ, **ISA_ENV[args.isa]} if args.isa else None
    if args.rescore:  # run-all ran (its timings are in the logs): predict and score again
        source = work / "source" / anatomy.TASK
        converted = harness.Measurement("", wall_seconds(logs / "convert.time"), 0.0, 0, "")
        ran = harness.Measurement("", wall_seconds(logs / "run_all.time"), 0.0, 0, "")
        load_before, samples = None, []  # sampled by the run that was cut short, lost with it
        shutil.rmtree(work / "predictions", ignore_errors=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
        source = anatomy.write_task(work / "source", args.cases, args.test_cases, args.seed)
        convert = [*toolkit, "convert", source, "-w", workspace]
        converted = harness.measure([str(c) for c in convert], logs / "convert.log").check()
        run_all = [*toolkit, "run-all", anatomy.TASK, "-w", workspace, "--preset", "quick"]
        run_all += ["--time-budget", budget, "--device", "cpu"]
        if args.isa:
            run_all += ["--precision", ISA_PRECISION[args.isa]]
        load_before = round(os.getloadavg()[0], 2)
        with LoadSampler() as load:
            ran = harness.measure([str(c) for c in run_all], logs / "run_all.log", env=env)
        samples = load.samples
    if ran.returncode == 2:  # the budget bought no useful training here: run-all said why
        return {
            "budget": budget,
            "budget_seconds": parse_duration(budget),
            "seconds": {"convert": converted.wall_s, "run_all": ran.wall_s},
            "load": {"before": load_before, "during": samples},
            "isa": args.isa,
            "refused": Path(ran.log).read_text(errors="replace").strip().splitlines()[-1],
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    ran.check()
    predictions = work / "predictions"
    predict = [*toolkit, "predict", "-d", anatomy.TASK, "-w", workspace, "-i", source / "imagesTs"]
    predict += ["-o", predictions, "--device", "cpu", "-q", "--no-tta"]
    if args.isa:
        predict += ["--precision", ISA_PRECISION[args.isa]]
    predicted = harness.measure([str(c) for c in predict], logs / "predict.log", env=env).check()
    names = list(anatomy.STRUCTURES)
    dice = case_dice(predictions, source / "labelsTs", list(range(1, len(names) + 1)))
    dataset = workspace / anatomy.TASK
    run = json.loads((dataset / "pipeline" / "run.json").read_text())
    validation = {}
    for summary in sorted((dataset / "models").glob("*/fold_*/validation/summary.json")):
        data = json.loads(summary.read_text())
        validation[f"{summary.parents[2].name}/{summary.parents[1].name}"] = data.get(
            "mean_foreground_dice"
        )
    return {
        "budget": budget,
        "budget_seconds": parse_duration(budget),
        "isa": args.isa,
        "seconds": {
            "convert": converted.wall_s,
            "run_all": ran.wall_s,
            "predict": predicted.wall_s,
        },
        "load": {"before": load_before, "during": samples},
        "time_budget": run.get("time_budget"),
        "calibration": run.get("calibration"),
        "validation_dice": validation,
        "selection": json.loads((dataset / "selection.json").read_text()).get("candidate"),
        "class_names": names,
        "dice": dice,
        "summary": summarize(dice, names),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def render(data: dict) -> str:
    flags = data["machine"].get("cpu_flags", [])
    lines = [
        "# `run-all --time-budget` on real anatomy",
        "",
        f"Machine: {data['machine']['cpus']} CPUs ({', '.join(flags) or 'flags unknown'}); shared "
        "with other engineers' work, so its load varied (sampled every 30 s during run-all, "
        "below). No GPU was lent. Task: "
        f"`{anatomy.TASK}` from `bench/anatomy.py` ({data['cases']} training cases, "
        f"{data['test_cases']} held out, 74 x 90 x 102 voxels at 1 mm). Command: "
        "`toolkit run-all Task905_DeepGrey --preset quick --time-budget B --device cpu` "
        "(cpu plan, 3d_fullres, final validation without mirroring), then `toolkit predict "
        "--no-tta` of the held-out cases.",
        "",
        "| run | run-all wall (min) | within | trainings bought | precision | s/iteration calibrated | training / validation slowdown seen | load during (min-max) | held-out mean Dice [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in sorted(data["runs"].items(), key=lambda kv: kv[1]["budget_seconds"]):
        r = {**r, "budget": label}
        load = r["load"]["during"] or [r["load"]["before"]]
        load_text = "not sampled" if None in load else f"{min(load):.1f}-{max(load):.1f}"
        if "refused" in r:
            lines.append(
                f"| {r['budget']} | {r['seconds']['run_all'] / 60:.1f} | refused: {r['refused']} "
                f"| - | - | - | - | {load_text} | - |"
            )
            continue
        plan = r.get("time_budget") or {}
        bought = ", ".join(
            f"{t['configuration']} fold {t['fold']} {t['epochs']}x{t['iterations_per_epoch']}"
            for t in plan.get("trainings", [])
        )
        calibration = next(iter((r.get("calibration") or {}).values()), {})
        s = r["summary"]
        wall = r["seconds"]["run_all"]
        lines.append(
            f"| {r['budget']} | {wall / 60:.1f} | {'yes' if wall <= r['budget_seconds'] else '**no**'} "
            f"| {bought} | {calibration.get('precision', '-')}"
            + (f", {r['isa'].upper()} only (emulated)" if r.get("isa") else "")
            + " "
            f"| {calibration.get('seconds_per_iteration', float('nan')):.3g} "
            f"| {plan.get('slowdown', '-')} / {plan.get('validation_slowdown', '-')} "
            f"| {load_text} "
            f"| {s['mean_dice']:.3f} [{s['mean_interval'][0]:.3f}, {s['mean_interval'][1]:.3f}] |"
        )
    lines += ["", "Per class (held-out Dice):", ""]
    scored = sorted(
        ({**r, "budget": k} for k, r in data["runs"].items() if "summary" in r),
        key=lambda r: r["budget_seconds"],
    )
    names = scored[0]["class_names"] if scored else []
    rows = [
        [r["budget"], *[round(r["summary"]["class_dice"][n], 3) for n in names]] for r in scored
    ]
    lines.append(harness.markdown_table(["budget", *names], rows))
    lines += ["", "Re-planning and the estimate's notes per budget:", ""]
    for r in scored:
        plan = r.get("time_budget") or {}
        lines.append(
            f"- {r['budget']} ({r['date']}): re-planned {len(plan.get('replans', []))} time(s)"
            + (f" ({'; '.join(plan['replans'])})" if plan.get("replans") else "")
            + f"; more time: {plan.get('more_time') or '-'}; load average every 30 s: "
            + f"{', '.join(f'{v:.0f}' for v in r['load']['during']) or 'not sampled'}."
        )
    lines += [
        "",
        f"Done-when: `--time-budget 30m` within 30 minutes with held-out mean Dice >= {TARGET_DICE}.",
        "",
        'A run marked "AVX2 only (emulated)" stands in for a CPU without AVX-512: torch\'s '
        "kernels and oneDNN's convolutions held to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, "
        "`ONEDNN_MAX_CPU_ISA=AVX2`) and fp32, which `--precision auto` picks without native "
        "bf16; the cores, clock and memory are still this machine's "
        "(`python -m bench.budget --budgets 30m --isa avx2 --tag avx2`).",
        "",
        "Reproduce: `python -m bench.budget --budgets 10m,20m,30m,60m`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="30m", help="comma-separated, e.g. 10m,20m,30m,60m")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--test-cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="the task generator's seed")
    parser.add_argument("--tag", default="", help="kept beside earlier runs of the same budget")
    parser.add_argument(
        "--isa",
        choices=sorted(ISA_ENV),
        default=None,
        help="hold torch and oneDNN to this instruction set (fp32): a CPU without AVX-512, emulated",
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="predict and score again the run-all each budget's work folder holds (its load "
        "samples are not kept)",
    )
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown")
    args = parser.parse_args(argv)
    results = harness.RESULTS / f"{NAME}.json"
    data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
    if not args.render:
        os.environ.setdefault("TOOLKIT_QUIET", "1")
        for budget in [b.strip() for b in args.budgets.split(",") if b.strip()]:
            flags = cpu_flags() or []
            machine = harness.machine()
            machine["cpu_flags"] = [f for f in FLAGS_SHOWN if f in flags]
            data.update(machine=machine, cases=args.cases, test_cases=args.test_cases)
            run = run_budget(budget, args)
            # read again: other budgets may have been run meanwhile in another process
            data = json.loads(results.read_text()) if results.is_file() else {"runs": {}}
            data.update(machine=machine, cases=args.cases, test_cases=args.test_cases)
            data["runs"][f"{budget} {args.tag}".strip()] = run
            harness.write_results(NAME, data, render(data))
    else:
        harness.write_results(NAME, data, render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
