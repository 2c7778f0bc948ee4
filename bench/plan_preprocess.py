"""Fingerprint + plan + preprocess: ours vs nnU-Net v2, on the same synthetic tasks.

    .venv/bin/python -m bench.plan_preprocess [--tasks ct,mr] [--cases 30] [--workers 2]
    .venv/bin/python -m bench.plan_preprocess --tasks lits [--cases 5] [--workers 1]

``lits`` is LiTS-sized CT (512x512x350-600, mixed spacings) for peak memory and time per
stage, convert included, against nnU-Net v2: :mod:`bench.ct_memory`, results in
``bench/results/plan_preprocess_ct.{json,md}``. The other tasks:

For each task: generate it, convert it into a workspace, link it into nnU-Net's raw layout,
run both tools' three stages with the same worker count under ``/usr/bin/time -v``, then
compare the plans field by field and the preprocessed cases value by value (the comparison
of cases runs in nnU-Net's venv with nnU-Net's own loader). Writes
``bench/results/plan_preprocess.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import (
    BENCH,
    RESULTS,
    WORK,
    NnunetFolders,
    ensure_nnunet,
    export_nnunet_raw,
    log,
    machine,
    markdown_table,
    measure,
    nnunet_command,
    nnunet_dataset_name,
    nnunet_python,
    nnunet_versions,
    write_results,
)
from toolkit.convert.stage import convert_task
from toolkit.core.fingerprint import Fingerprint
from toolkit.core.plans import Plans
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

IS_BENCHMARK = True
NAME = "plan_preprocess"
DEFAULT_SHAPES = {"ct": (64, 80, 72), "mr": (24, 80, 72), "2d": (96, 96)}
DATASET_IDS = {"ct": 902, "mr": 901, "2d": 903}
NORMALIZATION_NAMES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "none",
}
CONFIGS = ("2d", "3d_fullres", "3d_lowres")

# differences that are deliberate, with the reason (anything else is reported as unexplained)
EXPLAINED = {
    "median_shape": "ours stores whole voxels; nnU-Net keeps the fractional median (e.g. 35.5). Planning uses the fractional value in both.",
    "ct_intensity": "foreground intensity statistics: both weigh every case equally; nnU-Net draws 1e8/n samples per case with replacement, "
    "we take each case's foreground voxels once with weight 1/count, so percentiles differ within sampling noise.",
}


def ours_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


def run_task(kind: str, cases: int, workers: int, repeat: int, shape) -> dict:
    work = WORK / NAME / kind
    if work.exists():
        shutil.rmtree(work)
    log(f"{kind}: generating {cases} cases of {shape}")
    task = generate_task(
        kind, work / "msd", n_cases=cases, n_test=0, shape=shape, seed=0, force=True
    )
    paths = DatasetPaths(work / "ws" / task.name)
    convert_task(task, paths, workers=workers, quiet=True)
    folders = NnunetFolders(work / "nnunet")
    dataset_id = DATASET_IDS[kind]
    export_nnunet_raw(paths, folders, dataset_id)
    dataset_name = nnunet_dataset_name(dataset_id, paths.name)
    env = folders.env()
    for folder in (folders.preprocessed, folders.results):
        folder.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    ws = str(paths.root.parent)

    runs: dict[str, dict[str, list]] = {"ours": {}, "nnunet": {}}
    for r in range(repeat):
        # ours
        shutil.rmtree(paths.preprocessed, ignore_errors=True)
        stages = {
            "fingerprint": ours_command(
                "fingerprint", paths.name, "-w", ws, "-j", str(workers), "-q"
            ),
            "plan": ours_command("plan", paths.name, "-w", ws),
        }
        for stage, cmd in stages.items():
            runs["ours"].setdefault(stage, []).append(
                measure(cmd, logs / f"ours_{stage}_{r}.log").check()
            )
        our_configs = [c for c in Plans.load(paths.plans_json).configurations if c in CONFIGS]
        cmd = ours_command(
            "preprocess",
            paths.name,
            "-w",
            ws,
            "-c",
            ",".join(our_configs),
            "-j",
            str(workers),
            "-q",
        )
        runs["ours"].setdefault("preprocess", []).append(
            measure(cmd, logs / f"ours_preprocess_{r}.log").check()
        )
        # nnU-Net v2
        shutil.rmtree(folders.preprocessed / dataset_name, ignore_errors=True)
        stages = {
            "fingerprint": [
                nnunet_command("nnUNetv2_extract_fingerprint"),
                "-d",
                str(dataset_id),
                "-np",
                str(workers),
            ],
            "plan": [nnunet_command("nnUNetv2_plan_experiment"), "-d", str(dataset_id)],
        }
        for stage, cmd in stages.items():
            runs["nnunet"].setdefault(stage, []).append(
                measure(cmd, logs / f"nnunet_{stage}_{r}.log", env=env).check()
            )
        their_plans = json.loads(
            (folders.preprocessed / dataset_name / "nnUNetPlans.json").read_text()
        )
        their_configs = [c for c in their_plans["configurations"] if c in CONFIGS]
        cmd = [nnunet_command("nnUNetv2_preprocess"), "-d", str(dataset_id), "-c", *their_configs]
        cmd += ["-np", *[str(workers)] * len(their_configs)]
        runs["nnunet"].setdefault("preprocess", []).append(
            measure(cmd, logs / f"nnunet_preprocess_{r}.log", env=env).check()
        )

    timing = {}
    for tool, stages in runs.items():
        timing[tool] = {
            stage: {
                "wall_s": statistics.median(m.wall_s for m in ms),
                "per_case_s": statistics.median(m.wall_s for m in ms) / cases,
                "peak_rss_mb": max(m.peak_rss_mb for m in ms),
                "runs": [m.wall_s for m in ms],
            }
            for stage, ms in stages.items()
        }
        total = sum(v["wall_s"] for v in timing[tool].values())
        timing[tool]["total"] = {
            "wall_s": total,
            "per_case_s": total / cases,
            "peak_rss_mb": max(v["peak_rss_mb"] for v in timing[tool].values()),
        }

    ours = Plans.load(paths.plans_json)
    theirs = json.loads((folders.preprocessed / dataset_name / "nnUNetPlans.json").read_text())
    fingerprint = Fingerprint.load(paths.fingerprint_json)
    their_fp = json.loads(
        (folders.preprocessed / dataset_name / "dataset_fingerprint.json").read_text()
    )
    plan_rows = compare_plans(ours, theirs, fingerprint, their_fp)
    case_rows = compare_cases(ours, folders.preprocessed / dataset_name, paths, work)
    return {
        "kind": kind,
        "cases": cases,
        "shape": list(shape),
        "workers": workers,
        "repeat": repeat,
        "timing": timing,
        "plans": plan_rows,
        "preprocessed": case_rows,
    }


def _close(a, b, rel: float = 1e-6) -> bool:
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    return a == b


def compare_plans(
    ours: Plans, theirs: dict, fingerprint: Fingerprint, their_fp: dict
) -> list[dict]:
    rows = []

    def add(
        config: str, field: str, mine, ref, equal: bool | None = None, note_key: str | None = None
    ):
        equal = _close(mine, ref) if equal is None else equal
        note = "" if equal else EXPLAINED.get(note_key or field, "UNEXPLAINED")
        rows.append(
            {
                "configuration": config,
                "field": field,
                "ours": mine,
                "nnunet": ref,
                "equal": equal,
                "note": note,
            }
        )

    add("(all)", "transpose_forward", ours.transpose_forward, theirs["transpose_forward"])
    mine_names = sorted(ours.configurations)
    ref_names = sorted(theirs["configurations"])
    add("(all)", "configurations", mine_names, ref_names)
    for name in CONFIGS:
        if name not in ours.configurations or name not in theirs["configurations"]:
            continue
        c, r = ours.configurations[name], theirs["configurations"][name]
        arch = r["architecture"]["arch_kwargs"]
        dims = c.spatial_dims
        add(name, "target spacing", c.target_spacing[3 - dims :], [float(v) for v in r["spacing"]])
        median_ref = [float(v) for v in r["median_image_size_in_voxels"]]
        add(
            name,
            "median_shape",
            c.median_shape[3 - dims :],
            median_ref,
            equal=c.median_shape[3 - dims :] == [round(v) for v in median_ref]
            and median_ref == [float(round(v)) for v in median_ref],
        )
        add(name, "patch size", c.patch_size, list(r["patch_size"]))
        add(name, "batch size", c.batch_size, r["batch_size"])
        add(name, "pooling (strides)", c.architecture.strides, [list(s) for s in arch["strides"]])
        add(
            name,
            "kernel sizes",
            c.architecture.kernel_sizes,
            [list(k) for k in arch["kernel_sizes"]],
        )
        add(name, "features", c.architecture.features_per_stage, list(arch["features_per_stage"]))
        add(
            name, "convs per stage", c.architecture.n_conv_per_stage, list(arch["n_conv_per_stage"])
        )
        add(
            name,
            "normalization",
            [n.scheme for n in c.normalization],
            [NORMALIZATION_NAMES.get(s, s) for s in r["normalization_schemes"]],
        )
        add(
            name,
            "non-zero mask",
            [n.use_nonzero_mask for n in c.normalization],
            list(r["use_mask_for_norm"]),
        )
        add(name, "batch dice", c.batch_dice, r["batch_dice"])
    for ch, stats in enumerate(fingerprint.intensity):
        ref = their_fp["foreground_intensity_properties_per_channel"][str(ch)]
        for ours_key, ref_key in (
            ("mean", "mean"),
            ("std", "std"),
            ("percentile_00_5", "percentile_00_5"),
            ("percentile_99_5", "percentile_99_5"),
        ):
            mine, value = getattr(stats, ours_key), ref[ref_key]
            rel = abs(mine - value) / max(abs(value), 1e-9)
            add(
                f"channel {ch}",
                f"intensity {ours_key}",
                round(mine, 4),
                round(value, 4),
                equal=rel < 1e-6,
                note_key="ct_intensity",
            )
            rows[-1]["relative_difference"] = rel
    return rows


def compare_cases(ours: Plans, their_root: Path, paths: DatasetPaths, work: Path) -> list[dict]:
    rows = []
    for name in CONFIGS:
        if name not in ours.configurations:
            continue
        theirs = their_root / f"nnUNetPlans_{name}"
        if not theirs.is_dir():
            continue
        out = work / f"compare_{name}.json"
        subprocess.run(
            [
                str(nnunet_python()),
                str(BENCH / "nnunet_case_compare.py"),
                str(theirs),
                str(paths.preprocessed_dir(ours.configurations[name].data_identifier)),
                str(out),
            ],
            check=True,
        )
        cases = json.loads(out.read_text())
        same = [c for c in cases if c["same_shape"]]
        rows.append(
            {
                "configuration": name,
                "cases": len(cases),
                "same_shape": len(same),
                "max_abs_diff": max((c["max_abs_diff"] for c in same), default=None),
                "mean_abs_diff": statistics.mean(c["mean_abs_diff"] for c in same)
                if same
                else None,
                "min_label_agreement": min((c["label_agreement"] for c in same), default=None),
                "mean_label_agreement": statistics.mean(c["label_agreement"] for c in same)
                if same
                else None,
            }
        )
    return rows


def render(result: dict) -> str:
    lines = [
        "# Fingerprint + plan + preprocess: toolkit vs nnU-Net v2",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_average']} at start, "
        f"{result['machine']['date']}. nnU-Net: {result['nnunet']} in its own venv (`bench/.venv-nnunet`, "
        "its `nnUNetv2_*` commands). Both tools run as separate commands with the same worker count, "
        "timed by `/usr/bin/time -v` (peak RSS = the largest single process).",
        "",
    ]
    for task in result["tasks"]:
        t = task["timing"]
        lines += [
            f"## {task['kind']}: {task['cases']} cases of {'x'.join(map(str, task['shape']))}, {task['workers']} workers",
            "",
        ]
        rows = []
        for stage in ("fingerprint", "plan", "preprocess", "total"):
            o, n = t["ours"][stage], t["nnunet"][stage]
            rows.append(
                [
                    stage,
                    o["wall_s"],
                    o["per_case_s"],
                    o["peak_rss_mb"],
                    n["wall_s"],
                    n["per_case_s"],
                    n["peak_rss_mb"],
                    n["wall_s"] / o["wall_s"],
                ]
            )
        lines.append(
            markdown_table(
                [
                    "stage",
                    "ours s",
                    "ours s/case",
                    "ours peak MB",
                    "nnU-Net s",
                    "nnU-Net s/case",
                    "nnU-Net peak MB",
                    "nnU-Net / ours",
                ],
                rows,
            )
        )
        lines.append("")
        diffs = [r for r in task["plans"] if not r["equal"]]
        lines.append(
            f"Plans: {sum(r['equal'] for r in task['plans'])} of {len(task['plans'])} fields equal."
        )
        lines.append("")
        plan_rows = []
        for r in task["plans"]:
            note = r["note"]
            if not r["equal"] and note != "UNEXPLAINED":
                note = "explained below"
                if "relative_difference" in r:
                    note = f"relative difference {r['relative_difference']:.1e}, explained below"
            plan_rows.append(
                [
                    r["configuration"],
                    r["field"],
                    str(r["ours"]),
                    str(r["nnunet"]),
                    "yes" if r["equal"] else "**no**",
                    note,
                ]
            )
        lines.append(
            markdown_table(
                ["configuration", "field", "ours", "nnU-Net", "equal", "note"], plan_rows
            )
        )
        lines.append("")
        if task["preprocessed"]:
            lines.append(
                "Preprocessed cases, ours vs nnU-Net's (same grid; normalized image values; labels):"
            )
            lines.append("")
            lines.append(
                markdown_table(
                    [
                        "configuration",
                        "cases",
                        "same shape",
                        "max abs diff",
                        "mean abs diff",
                        "min label agreement",
                        "mean label agreement",
                    ],
                    [
                        [
                            r["configuration"],
                            r["cases"],
                            r["same_shape"],
                            r["max_abs_diff"],
                            r["mean_abs_diff"],
                            r["min_label_agreement"],
                            r["mean_label_agreement"],
                        ]
                        for r in task["preprocessed"]
                    ],
                )
            )
            lines.append("")
        if diffs:
            lines.append("Differences, explained:")
            lines.append("")
            lines += [f"- {note}" for note in sorted({r["note"] for r in diffs})]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the Markdown from the last JSON result"
    )
    parser.add_argument(
        "--tasks",
        default="ct,mr",
        help="synthetic task kinds, comma-separated (ct, mr, 2d), or lits alone (LiTS-sized CT)",
    )
    parser.add_argument(
        "--cases", type=int, default=None, help="training cases per task (30; lits: 5)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes for both tools (2; lits: 1)"
    )
    parser.add_argument(
        "--nnunet-limit-gb",
        type=float,
        default=12.0,
        help="lits: address-space limit of each nnU-Net process, so it cannot exhaust the machine",
    )
    parser.add_argument(
        "--no-per-case", action="store_true", help="lits: skip the per-case peaks of our stages"
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions; medians are reported")
    args = parser.parse_args(argv)
    if args.tasks == "lits":
        return _lits(args)
    if args.render:
        result = json.loads((RESULTS / f"{NAME}.json").read_text())
        write_results(NAME, result, render(result))
        return 0
    args.cases = 30 if args.cases is None else args.cases
    args.workers = 2 if args.workers is None else args.workers
    ensure_nnunet()
    result = {"machine": machine(), "nnunet": nnunet_versions(), "tasks": []}
    for kind in [k for k in args.tasks.split(",") if k]:
        result["tasks"].append(
            run_task(kind, args.cases, args.workers, args.repeat, DEFAULT_SHAPES[kind])
        )
    write_results(NAME, result, render(result))
    print(render(result))
    unexplained = [
        r
        for t in result["tasks"]
        for r in t["plans"]
        if not r["equal"] and r["note"] == "UNEXPLAINED"
    ]
    return 1 if unexplained else 0


def _lits(args) -> int:
    from bench.ct_memory import NAME as CT_NAME
    from bench.ct_memory import render_lits, run_lits

    if args.render:
        result = json.loads((RESULTS / f"{CT_NAME}.json").read_text())
        write_results(CT_NAME, result, render_lits(result))
        return 0
    ensure_nnunet()
    result = {"machine": machine(), "nnunet": nnunet_versions()}

    def save(partial: dict) -> None:
        write_results(CT_NAME, {**result, **partial}, render_lits({**result, **partial}))

    result.update(
        run_lits(
            5 if args.cases is None else args.cases,
            1 if args.workers is None else args.workers,
            args.nnunet_limit_gb,
            not args.no_per_case,
            save=save,
        )
    )
    write_results(CT_NAME, result, render_lits(result))
    print(render_lits(result))
    over = [s for s, r in result["timing"]["ours"].items() if r["peak_rss_mb"] / 1024 >= 4.0]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
