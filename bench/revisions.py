"""The toolkit of two git revisions side by side: the same stages, the same data, one run.

For a change that should not change behaviour (a refactor) or one that should only change
speed. Each revision is checked out into ``bench/work/revisions/<sha>/`` (a git worktree)
and run from there with this venv (``PYTHONPATH`` picks its package), the working tree
being the other side by default. The same synthetic task goes through convert, fingerprint,
plan (``--preset cpu``), preprocess, a short seeded training of fold 0 with its validation,
and prediction of the test cases, once per revision per round, the revisions alternating
so that a busy machine slows both alike. Reported: wall time and peak memory per stage
(medians over rounds), and whether the two revisions wrote the same results, bit for bit:
preprocessed arrays, the trained network's weights, validation and test predictions.

    python -m bench.revisions --base 42aa19a          # base vs the working tree
    python -m bench.revisions --base A --new B --rounds 3

Not part of ``make bench`` (it compares revisions, not the toolkit with nnU-Net v2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from bench import harness

NAME = "revisions"
DATASET = "Task901_SynthMR"
STAGES = ("convert", "fingerprint", "plan", "preprocess", "train", "predict")


def checkout(rev: str | None) -> tuple[str, Path]:
    """(label, source root) of a revision; None is the working tree."""
    if rev is None:
        return "working tree", harness.ROOT
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=harness.ROOT, capture_output=True, text=True
    )
    if sha.returncode:
        raise SystemExit(f"unknown revision {rev!r}: {sha.stderr.strip()}")
    short = sha.stdout.strip()
    folder = harness.WORK / "revisions" / short
    if not (folder / "toolkit").is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(folder), short],
            cwd=harness.ROOT,
            check=True,
            capture_output=True,
        )
    return short, folder


def commands(work: Path, source: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    toolkit = [sys.executable, "-m", "toolkit"]
    ws = ["--workspace", str(work / "ws")]
    task = str(source / DATASET)
    return {
        "convert": [*toolkit, "convert", task, *ws, "--quiet"],
        "fingerprint": [*toolkit, "fingerprint", DATASET, *ws, "--quiet"],
        "plan": [*toolkit, "plan", DATASET, *ws, "--preset", "cpu"],
        "preprocess": [*toolkit, "preprocess", DATASET, *ws, "--configs", "3d_fullres", "-q"],
        "train": [
            *toolkit,
            "train",
            DATASET,
            "3d_fullres",
            "0",
            *ws,
            "--epochs",
            str(args.epochs),
            "--iters-per-epoch",
            str(args.iterations),
            "--val-iters",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ],
        "predict": [
            *toolkit,
            "predict",
            "-i",
            str(work / "ws" / DATASET / "raw" / "imagesTs"),
            "-o",
            str(work / "predicted"),
            "-m",
            str(work / "ws" / DATASET / "models" / "3d_fullres"),
            "--device",
            "cpu",
            "--save-probabilities",
            "--quiet",
        ],
    }


def run_revision(root: Path, work: Path, source: Path, args: argparse.Namespace) -> dict:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(root), "TOOLKIT_QUIET": "1"}
    times = {}
    for stage, command in commands(work, source, args).items():
        m = harness.measure(command, work / "logs" / f"{stage}.log", env=env).check()
        times[stage] = {"wall_s": m.wall_s, "peak_rss_mb": m.peak_rss_mb}
    return times


def _array_bytes(path: Path) -> bytes:
    if path.name.endswith(".nii.gz"):
        image = sitk.ReadImage(str(path))
        geometry = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        return sitk.GetArrayViewFromImage(image).tobytes() + repr(geometry).encode()
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return b"".join(arrays[k].tobytes() for k in sorted(arrays.files))
    if path.suffix == ".npy":
        return np.load(path).tobytes()
    if path.suffix == ".pt":
        network = torch.load(path, map_location="cpu", weights_only=True)["network"]
        return b"".join(k.encode() + network[k].numpy().tobytes() for k in sorted(network))
    return path.read_bytes()


def outputs(work: Path) -> dict[str, str]:
    """Digest of every result whose bits must not depend on the revision (timings excluded)."""
    dataset = work / "ws" / DATASET
    groups = {
        "preprocessed arrays": sorted((dataset / "preprocessed").rglob("*.npy")),
        "network weights": sorted((dataset / "models").rglob("checkpoint_final.pt")),
        "validation predictions": sorted((dataset / "models").rglob("validation/*.nii.gz")),
        "test labels": sorted((work / "predicted").glob("*.nii.gz")),
        "test probabilities": sorted((work / "predicted").glob("*.npz")),
    }
    digests = {}
    for name, files in groups.items():
        h = hashlib.sha256()
        for path in files:
            h.update(path.name.encode())
            h.update(_array_bytes(path))
        digests[name] = f"{len(files)} files, {h.hexdigest()[:16]}"
    return digests


def render(data: dict) -> str:
    base, new = data["labels"]
    lines = [
        f"# The toolkit at {base} and {new}, side by side",
        "",
        f"Machine: {data['machine']['cpus']} CPUs, load average {data['machine']['load_average']} "
        f"at start, {data['machine']['date']}. {data['cases']} training cases of {DATASET} "
        f"(`toolkit demo-data --seed 0`), `plan --preset cpu`, 3d_fullres fold 0 trained "
        f"{data['epochs']} x {data['iterations']} iterations (seeded), "
        f"{data['rounds']} round(s), revisions alternating; medians (peak memory too; the range is the fastest and slowest run).",
        "",
    ]
    rows = []
    for stage in STAGES:
        walls = [[r[stage]["wall_s"] for r in data["runs"][side]] for side in (base, new)]
        peaks = [[r[stage]["peak_rss_mb"] for r in data["runs"][side]] for side in (base, new)]
        a, b = (statistics.median(w) for w in walls)
        spread = [f"{min(w):.3g}-{max(w):.3g}" for w in walls]
        rows.append(
            [stage, a, b, b / a if a else float("nan"), *spread]
            + [statistics.median(p) for p in peaks]
        )
    headers = ["stage", f"{base} s", f"{new} s", "ratio", f"{base} range s", f"{new} range s"]
    headers += [f"{base} peak MB", f"{new} peak MB"]
    lines.append(harness.markdown_table(headers, rows))
    lines += ["", "Results bit for bit:", ""]
    lines.append(
        harness.markdown_table(
            ["result", base, new, "identical"],
            [
                [k, data["outputs"][base][k], data["outputs"][new][k], data["identical"][k]]
                for k in data["outputs"][base]
            ],
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="git revision to compare against (required to run)")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the Markdown from the last JSON result"
    )
    parser.add_argument("--new", default=None, help="git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per revision (medians)")
    parser.add_argument("--cases", type=int, default=8, help="training cases of the task")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per epoch")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads((harness.RESULTS / f"{NAME}.json").read_text())
        harness.write_results(NAME, data, render(data))
        return 0
    if not args.base:
        parser.error("--base is required")

    sides = [checkout(args.base), checkout(args.new)]
    if sides[0][0] == sides[1][0]:
        sides[1] = (f"{sides[1][0]} (again)", sides[1][1])
    work = harness.WORK / "revisions-run"
    source = work / "source"
    if source.exists():
        shutil.rmtree(source)
    subprocess.run(
        [sys.executable, "-m", "toolkit", "demo-data", str(source), "--task", "mr"]
        + ["--cases", str(args.cases), "--test-cases", "2", "--seed", "0"],
        env={**os.environ, "PYTHONPATH": str(sides[0][1])},
        check=True,
        capture_output=True,
    )
    data: dict = {
        "machine": harness.machine(),
        "labels": [label for label, _ in sides],
        "cases": args.cases,
        "epochs": args.epochs,
        "iterations": args.iterations,
        "rounds": args.rounds,
        "runs": {label: [] for label, _ in sides},
        "outputs": {},
    }
    for round_ in range(args.rounds):
        for label, root in sides:
            harness.log(f"round {round_ + 1}: {label}")
            side_work = work / label.split()[0] / ("again" if "again" in label else "")
            data["runs"][label].append(run_revision(root, side_work, source, args))
            data["outputs"][label] = outputs(side_work)
    base, new = data["labels"]
    data["identical"] = {
        k: data["outputs"][base][k] == data["outputs"][new][k] for k in data["outputs"][base]
    }
    markdown = render(data)
    harness.write_results(NAME, data, markdown)
    print(markdown)
    return 0 if all(data["identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
