"""LiTS-sized CT through convert, fingerprint, plan and preprocess: peak memory and time, ours vs nnU-Net v2.

Run by ``python -m bench.plan_preprocess --tasks lits [--cases 5] [--workers 1]``. The cases
(:mod:`bench.lits_like`, made once under ``bench/work/``) are converted, fingerprinted,
planned and preprocessed (``3d_fullres``) by both tools, each stage a separate command under
``/usr/bin/time -v``: its wall time and the peak resident memory of its largest process (a
worker, or the main process), which is what one worker needs. nnU-Net runs with a limit on
each process's address space (``prlimit --as``) so that its peak cannot take the machine's
memory from everything else; a stage that fails under it is reported as such. Then, per case
and in a fresh process, our fingerprint and preprocessing peaks beside the estimates our
stages use to cap their workers (:mod:`bench.case_peaks`). Writes
``bench/results/plan_preprocess_ct.json`` and ``.md``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from bench.harness import (
    WORK,
    NnunetFolders,
    log,
    markdown_table,
    measure,
    nnunet_command,
)
from bench.lits_like import FOLDER, case_geometry, generate_lits_like

NAME = "plan_preprocess_ct"
DATASET_ID = 904
TARGET_GB = 4.0
STAGES = ("convert", "fingerprint", "plan", "preprocess")


def _ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit", *args]


def _limited(command: list, limit_gb: float) -> list[str]:
    return ["prlimit", f"--as={int(limit_gb * 2**30)}", "--", *map(str, command)]


def _stage_row(m) -> dict:
    return {
        "wall_s": m.wall_s,
        "peak_rss_mb": m.peak_rss_mb,
        "ok": m.returncode == 0,
        "log": m.log,
    }


def _failure(log_path: str) -> str:
    text = open(log_path, errors="replace").read()
    for key in ("MemoryError", "Unable to allocate", "Killed", "Error"):
        for line in text.splitlines()[::-1]:
            if key in line:
                return line.strip()[:200]
    return text.strip().splitlines()[-1][:200] if text.strip() else "failed"


def _progress(log_path: str) -> str:
    """How far nnU-Net's progress bar got before a failure, from its log (or nothing)."""
    text = open(log_path, errors="replace").read().replace("\r", "\n")
    bars = re.findall(r"(\d+)/(\d+) \[([\d:]+)<", text)
    if not bars:
        return ""
    done, total, elapsed = bars[-1]
    return (
        f"Its progress bar had {done} of {total} cases done after {elapsed} (min:s) when it failed."
    )


def run_lits(cases: int, workers: int, limit_gb: float, per_case: bool, save=None) -> dict:
    """The whole bench; ``save(result)`` is called after every stage with what is known so far."""
    work = WORK / "plan_preprocess" / "lits"
    log(f"lits: {cases} LiTS-sized cases under {work / 'msd'} (made once)")
    msd = generate_lits_like(work / "msd", cases)
    ws = work / "ws"
    logs = work / "logs"
    dataset = FOLDER
    env = dict(os.environ, OMP_NUM_THREADS="1")
    timing: dict[str, dict] = {"ours": {}, "nnunet": {}}
    geometry = [case_geometry(i) for i in range(cases)]
    result = {
        "cases": [
            {"shape": list(g.shape), "spacing_zyx": [g.slice_spacing, g.in_plane, g.in_plane]}
            for g in geometry
        ],
        "workers": workers,
        "nnunet_address_space_limit_gb": limit_gb,
        "target_gb": TARGET_GB,
        "target_spacing": None,
        "timing": timing,
        "per_case": [],
    }
    commands = {
        "convert": _ours("convert", str(msd), "-w", str(ws), "-j", str(workers), "-q", "-f"),
        "fingerprint": _ours("fingerprint", dataset, "-w", str(ws), "-j", str(workers), "-q"),
        "plan": _ours("plan", dataset, "-w", str(ws)),
        "preprocess": _ours(
            "preprocess", dataset, "-w", str(ws), "-c", "3d_fullres", "-j", str(workers), "-q", "-f"
        ),
    }
    for stage, cmd in commands.items():
        log(f"lits: ours {stage}")
        m = measure(cmd, logs / f"ours_{stage}.log", env=env)
        timing["ours"][stage] = _stage_row(m.check())
        if stage == "plan":
            plans = json.loads((ws / dataset / "plans.json").read_text())
            result["target_spacing"] = plans["configurations"]["3d_fullres"]["target_spacing"]
        if save is not None:
            save(result)
    folders = NnunetFolders(work / "nnunet")
    shutil.rmtree(folders.root, ignore_errors=True)
    for folder in (folders.raw, folders.preprocessed, folders.results):
        folder.mkdir(parents=True)
    nn_env = {**folders.env(threads=1)}
    d = str(DATASET_ID)
    n = str(workers)
    theirs = {
        "convert": [
            nnunet_command("nnUNetv2_convert_MSD_dataset"),
            "-i",
            msd,
            "-overwrite_id",
            d,
            "-np",
            n,
        ],
        "fingerprint": [nnunet_command("nnUNetv2_extract_fingerprint"), "-d", d, "-np", n],
        "plan": [nnunet_command("nnUNetv2_plan_experiment"), "-d", d],
        "preprocess": [
            nnunet_command("nnUNetv2_preprocess"),
            "-d",
            d,
            "-c",
            "3d_fullres",
            "-np",
            n,
        ],
    }
    for stage, cmd in theirs.items():
        log(f"lits: nnU-Net {stage} (address space limited to {limit_gb:g} GB per process)")
        m = measure(_limited(cmd, limit_gb), logs / f"nnunet_{stage}.log", env=nn_env)
        row = _stage_row(m)
        if not row["ok"]:
            row["failure"] = _failure(m.log)
            row["progress"] = _progress(m.log)
            log(f"lits: nnU-Net {stage} failed: {row['failure']}")
        timing["nnunet"][stage] = row
        if save is not None:
            save(result)
        if not row["ok"]:
            break
    if per_case:
        result["per_case"] = _per_case(ws, dataset, cases)
    return result


def _per_case(ws, dataset: str, cases: int) -> list[dict]:
    rows = []
    for i in range(1, cases + 1):
        for stage in ("fingerprint", "preprocess"):
            case = f"litslike_{i:03d}"
            log(f"lits: our {stage} peak of {case} alone")
            out = subprocess.run(
                [sys.executable, "-m", "bench.case_peaks", stage, str(ws), dataset, case],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def render_lits(result: dict) -> str:
    m = result["machine"]
    t = result["timing"]
    lines = [
        "# LiTS-sized CT: convert, fingerprint, plan, preprocess (3d_fullres), toolkit vs nnU-Net v2",
        "",
        f"Machine: {m['cpus']} CPUs (shared), load average {m['load_average']} at start, {m['date']}; "
        f"`OMP_NUM_THREADS=1 nice -n 19`. nnU-Net: {result['nnunet']['nnunetv2']}. "
        f"{len(result['cases'])} synthetic LiTS-like cases (`bench/lits_like.py`: 512x512 slices, int16 HU, "
        "a liver-like organ and tumour-like lesions), resampled to the median spacing "
        f"{[round(v, 3) for v in result['target_spacing'] or []]} mm (z, y, x):",
        "",
        markdown_table(
            ["case", "shape (z, y, x)", "spacing (z, y, x) mm"],
            [
                [f"litslike_{i + 1:03d}", "x".join(map(str, c["shape"])), c["spacing_zyx"]]
                for i, c in enumerate(result["cases"])
            ],
        ),
        "",
        f"Each stage is one command with {result['workers']} worker(s), timed by `/usr/bin/time -v`; "
        "peak = the resident memory of its largest process (a worker, or the main process that "
        f"does the work with one worker), against the target of {result['target_gb']:g} GB per worker. "
        f"nnU-Net's processes run under an address-space limit of {result['nnunet_address_space_limit_gb']:g} GB "
        "each (`prlimit --as`), so that a runaway peak fails instead of taking the shared machine's memory.",
        "",
    ]
    rows = []
    for stage in STAGES:
        o, n = t["ours"].get(stage), t["nnunet"].get(stage)
        if o is None:
            continue
        their_time = (
            "not run"
            if n is None
            else (f"{n['wall_s']:.1f}" if n["ok"] else f"failed after {n['wall_s']:.0f} s")
        )
        their_peak = "" if n is None else f"{n['peak_rss_mb'] / 1024:.2f}"
        rows.append(
            [
                stage,
                f"{o['wall_s']:.1f}",
                f"{o['peak_rss_mb'] / 1024:.2f}",
                "yes" if o["peak_rss_mb"] / 1024 < result["target_gb"] else "**no**",
                their_time,
                their_peak,
            ]
        )
    lines.append(
        markdown_table(
            [
                "stage",
                "ours s",
                "ours peak GB",
                f"ours < {result['target_gb']:g} GB",
                "nnU-Net s",
                "nnU-Net peak GB",
            ],
            rows,
        )
    )
    lines.append("")
    failed = [(s, r) for s, r in t["nnunet"].items() if not r["ok"]]
    for stage, r in failed:
        lines.append(f"nnU-Net's {stage} failed under the limit: `{r.get('failure', '')}`.")
        if r.get("progress"):
            lines.append(r["progress"])
        lines.append("")
    previous = result.get("previous")
    if previous:
        lines += [
            f"The previous revision ({previous['revision']}, whole-volume float copies and resampling) on "
            f"the same cases and machine, {previous['when']}, same commands:",
            "",
            markdown_table(
                ["stage", "previous s", "previous peak GB", "now peak GB"],
                [
                    [
                        stage,
                        f"{r['wall_s']:.1f}",
                        f"{r['peak_rss_mb'] / 1024:.2f}",
                        f"{t['ours'][stage]['peak_rss_mb'] / 1024:.2f}"
                        if stage in t["ours"]
                        else "",
                    ]
                    for stage, r in previous["stages"].items()
                ],
            ),
            "",
            "Preprocessed cases now against the previous revision's (float32 images after CT "
            "normalization; labels; oversampling locations):",
            "",
            markdown_table(
                [
                    "case",
                    "shape",
                    "max abs diff",
                    "voxels differing",
                    "label voxels differing",
                    "locations identical",
                ],
                [
                    [
                        r["case"],
                        "x".join(map(str, r["shape"])),
                        f"{r['max_abs_diff']:.2g}",
                        f"{r['voxels_differing']:,} of {r['voxels']:,}",
                        r["label_voxels_differing"],
                        "yes" if r["locations_identical"] else "no",
                    ]
                    for r in previous["cases"]
                ],
            ),
            "",
            previous["note"],
            "",
        ]
    if result["per_case"]:
        lines += [
            "Per case, alone in a fresh process (`bench/case_peaks.py`): our peak and the estimate "
            "the stage uses to cap its workers by the memory available (it must not be below the peak):",
            "",
        ]
        pr = []
        for r in result["per_case"]:
            pr.append(
                [
                    r["case"],
                    r["stage"],
                    f"{r['voxels'] / 1e6:.0f}",
                    f"{r.get('voxels_after_resampling', 0) / 1e6:.0f}"
                    if "voxels_after_resampling" in r
                    else "",
                    f"{r['peak_rss_mb'] / 1024:.2f}",
                    f"{r['estimate_mb'] / 1024:.2f}",
                    f"{r['seconds']:.1f}",
                ]
            )
        lines.append(
            markdown_table(
                ["case", "stage", "Mvoxels", "Mvoxels resampled", "peak GB", "estimate GB", "s"], pr
            )
        )
        lines.append("")
    return "\n".join(lines)
