"""Prediction: seconds per case and peak memory, the toolkit vs nnU-Net v2 on identical weights.

``python -m bench.predict`` (also run by ``make bench``):

1. A synthetic CT task (``toolkit.synthetic``, 64x80x72 voxels) is converted into a
   workspace; nnU-Net v2 (its own venv, :mod:`bench.harness`) plans, preprocesses and trains a
   full-width ``3d_fullres`` model for one short epoch (``--iterations``).
2. Both tools predict the same test cases with that model's weights, the toolkit reading the
   nnU-Net v2 model folder directly: with and without mirroring, ``--repeats`` times each, one
   process per run. Each run's wall time, its time inside the prediction loop per case, and
   its peak memory: the sum of the resident memory of the whole process tree (sampled every
   0.1 s, nnU-Net's worker processes included) and the largest single process (the kernel's
   own high-water mark). The two tools' label maps are compared (Dice per class). The toolkit
   also runs with ``--compile`` (torch.compile; its seconds per case include the one-time
   compile, and the cases after the first are compared with the eager run's; ``--no-compile``
   skips it).
3. The toolkit in bf16 autocast on the CPU: speed, and agreement with its float32 labels.
4. A CT-sized volume (512x512x400 voxels, int16 on disk) predicted end to end (read,
   preprocess, sliding window, export, write) on the CPU with a randomly initialised network
   of a realistic CT plan (6 stages, patch 128^3, 3 classes), without mirroring: peak memory
   must stay under 8 GB. The sweep uses a narrow network so that the run takes minutes; the
   activation memory of the full-width network (32..320 features) for one 128^3 window is
   measured separately and added for the full-width bound.

``--device cuda`` runs everything on the GPU instead (nnU-Net v2 with its own CUDA settings);
``--skip-ct`` / ``--ct-only`` select parts. Results: ``bench/results/predict[_cuda].json`` + ``.md``.

``--backends`` runs only the comparison of the toolkit's network runtimes on the same trained
model (torch fp32 and bf16, OpenVINO automatic and fp32, ONNX Runtime; :mod:`bench.predict_backends`),
with ``--image-record NAME=export.json`` adding built images' sizes and start-to-output
times. Results: ``bench/results/predict_backends.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench import harness
from toolkit.core.device import cpu_has_native_bf16

IS_BENCHMARK = True

WORK = harness.WORK / "predict"
REFERENCE = harness.BENCH / "nnunet_v2_reference.py"
DATASET_ID = 995
GB = 1024**3
CT_SHAPE = (400, 512, 512)  # (z, y, x)
CT_SPACING_XYZ = (0.78, 0.78, 1.0)
CT_PATCH = (128, 128, 128)
CT_FULL_FEATURES = (32, 64, 128, 256, 320, 320)
CT_NARROW_FEATURES = (4, 8, 16, 32, 64, 64)
MEMORY_LIMIT_GB = 8.0


# --------------------------------------------------------------------------- process-tree memory


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces: the parent pid is the second field after ')'
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack.extend(_children(p))
    return total


def run_measured(command: list[str], log_path: Path, env: dict | None = None) -> dict:
    """Run a command; wall time, peak RSS of the process tree (sampled) and of the largest process."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    report = log_path.with_suffix(".time")
    peak = [0]
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [harness.TIME, "-v", "-o", str(report), *map(str, command)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
        wall = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"`{' '.join(map(str, command))}` failed ({code}):\n{text[-3000:]}")
    try:
        _, single = harness._parse_time(report.read_text())
    except (FileNotFoundError, RuntimeError):
        single = float("nan")
    results = [
        json.loads(line[len("RESULT ") :])
        for line in text.splitlines()
        if line.startswith("RESULT ")
    ]
    return {
        "wall_s": wall,
        "tree_peak_gb": peak[0] / GB,
        "process_peak_gb": single / 1024,
        "result": results[-1] if results else {},
    }


def _env() -> dict:
    """This process's environment with the repository first on the import path."""
    extra = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(harness.ROOT), *([extra] if extra else [])]),
    }


# --------------------------------------------------------------------------- programs run as subprocesses


def _ours(args: argparse.Namespace) -> None:
    """Predict a folder with the toolkit (what `toolkit predict` does), printing its timing."""
    from toolkit.inference.stage import PredictOptions, run_predict

    options = PredictOptions(
        folds=[int(f) for f in args.folds.split(",")],
        device=args.device,
        use_mirroring=not args.no_tta,
        precision=args.precision,
        save_probabilities=args.save_probabilities,
        quiet=True,
        compile=args.compile,
        backend=args.backend,
    )
    start = time.perf_counter()
    reports = run_predict(Path(args.input), Path(args.output), options, model=Path(args.model))
    seconds = time.perf_counter() - start
    result = {
        "cases": len(reports),
        "seconds": seconds,
        "windows": sum(r.windows for r in reports),
        "case_seconds": [r.seconds for r in reports],
    }
    if args.device == "cuda" and args.backend in (None, "torch"):
        import torch

        result["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / GB
    print("RESULT " + json.dumps(result), flush=True)


def ct_plans(features: tuple[int, ...]):
    from toolkit.core.plans import Architecture, Configuration, Normalization, Plans

    n = len(features)
    architecture = Architecture(
        features_per_stage=list(features),
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    spacing_zyx = [CT_SPACING_XYZ[2], CT_SPACING_XYZ[1], CT_SPACING_XYZ[0]]
    configuration = Configuration(
        name="3d_fullres",
        data_identifier="3d_fullres",
        spatial_dims=3,
        target_spacing=spacing_zyx,
        median_shape=list(CT_SHAPE),
        patch_size=list(CT_PATCH),
        batch_size=2,
        architecture=architecture,
        normalization=[Normalization("ct", False, 60.0, 80.0, -150.0, 250.0)],
    )
    return Plans(
        dataset_name="SynthCTLarge",
        channel_names={"0": "CT"},
        labels={"background": 0, "organ": 1, "lesion": 2},
        transpose_forward=[0, 1, 2],
        transpose_backward=[0, 1, 2],
        original_median_spacing=spacing_zyx,
        original_median_shape=list(CT_SHAPE),
        configurations={"3d_fullres": configuration},
    )


def _ct_model(args: argparse.Namespace) -> None:
    """A model folder of the CT plan with random weights, and the CT-sized image."""
    import SimpleITK as sitk
    import torch

    from toolkit.core.checkpoint import network_checkpoint
    from toolkit.nets.unet import build_network

    features = CT_FULL_FEATURES if args.full else CT_NARROW_FEATURES
    plans = ct_plans(features)
    model = Path(args.model)
    (model / "fold_0").mkdir(parents=True, exist_ok=True)
    plans.save(model / "plans.json")
    (model / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": plans.channel_names,
                "labels": plans.labels,
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    torch.manual_seed(0)
    network = build_network(plans, plans.configuration("3d_fullres"))
    torch.save(
        network_checkpoint(network.state_dict(), "3d_fullres"),
        model / "fold_0" / "checkpoint_final.pt",
    )
    image_path = Path(args.image)
    if not image_path.exists():
        rng = np.random.default_rng(0)
        z, y, x = np.ogrid[: CT_SHAPE[0], : CT_SHAPE[1], : CT_SHAPE[2]]
        body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 230.0) ** 2 < 1
        organ = ((z - 200) / 80.0) ** 2 + ((y - 240) / 60.0) ** 2 + ((x - 300) / 70.0) ** 2 < 1
        volume = np.full(CT_SHAPE, -1000, dtype=np.int16)
        volume[np.broadcast_to(body, CT_SHAPE)] = 40
        volume[organ] = 120
        volume += rng.integers(-20, 20, size=CT_SHAPE, dtype=np.int16)
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(CT_SPACING_XYZ)
        image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        image_path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(image_path), useCompression=True)
    print("RESULT " + json.dumps({"model": str(model), "image": str(image_path)}), flush=True)


def _window(args: argparse.Namespace) -> None:
    """Activation memory of one full-width 128^3 window (inference mode), from the process's RSS."""
    import resource

    import torch

    from toolkit.nets.unet import build_network

    plans = ct_plans(CT_FULL_FEATURES)
    network = build_network(plans, plans.configuration("3d_fullres"), deep_supervision=False).eval()
    x = torch.zeros((1, 1, *CT_PATCH))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.inference_mode():
        network(x)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        "RESULT " + json.dumps({"activation_gb": (after - before) / GB, "seconds": seconds}),
        flush=True,
    )


# --------------------------------------------------------------------------- the benchmark


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def compare_folders(ours: Path, theirs: Path, labels: list[int]) -> dict:
    from toolkit.io.images import read_image

    per_class: dict[int, list[float]] = {c: [] for c in labels}
    geometry_equal = True
    for path in sorted(theirs.glob("*.nii.gz")):
        a, ga = read_image(ours / path.name)
        b, gb = read_image(path)
        geometry_equal &= ga.matches(gb) is None
        for c in labels:
            d = dice(a == c, b == c)
            if d is not None:
                per_class[c].append(d)
    return {
        "min_dice_per_class": {str(c): (min(v) if v else None) for c, v in per_class.items()},
        "mean_dice_per_class": {
            str(c): (statistics.mean(v) if v else None) for c, v in per_class.items()
        },
        "geometry_equal": geometry_equal,
    }


def nnunet_python() -> Path:
    """The reference's Python: ``$TOOLKIT_NNUNET_PYTHON`` (e.g. on a GPU machine), else the bench venv."""
    override = os.environ.get("TOOLKIT_NNUNET_PYTHON")
    return Path(override) if override else harness.ensure_nnunet()


def nnunet_versions() -> dict:
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in ('nnunetv2', 'torch', 'dynamic-network-architectures')}))"
    out = subprocess.run(
        [str(nnunet_python()), "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_task(cases: int, iterations: int, device: str) -> tuple[Path, Path]:
    """The synthetic task converted, and nnU-Net v2's trained model folder (reused when present)."""
    from toolkit.convert.stage import convert_task
    from toolkit.synthetic import generate_task
    from toolkit.workspace import DatasetPaths

    source = generate_task("ct", WORK / "source", n_cases=8, n_test=cases, seed=0, force=True)
    paths = DatasetPaths(WORK / "workspace" / "SynthCT")
    convert_task(source, paths, workers=1, force=True, quiet=True)
    test_images = WORK / "test_images"
    if test_images.exists():
        shutil.rmtree(test_images)
    test_images.mkdir(parents=True)
    for p in sorted((source / "imagesTs").glob("*.nii.gz")):
        if not p.name.startswith("."):
            shutil.copy(p, test_images / p.name.replace(".nii.gz", "_0000.nii.gz"))
    nnunet_root = WORK / "nnunet"
    stamp = nnunet_root / f"trained_{iterations}_{device}.json"
    if stamp.is_file():
        return test_images, Path(json.loads(stamp.read_text())["model"])
    if nnunet_root.exists():
        shutil.rmtree(nnunet_root)
    python = nnunet_python()
    harness.log("nnU-Net v2: fingerprint, plan, preprocess")
    run_measured(
        [
            python,
            REFERENCE,
            "prepare",
            "--root",
            nnunet_root,
            "--raw",
            paths.raw,
            "--dataset-id",
            DATASET_ID,
            "--configurations",
            "3d_fullres",
        ],
        WORK / "logs" / "prepare.log",
    )
    harness.log(f"nnU-Net v2: training 3d_fullres fold 0 for one epoch of {iterations} iterations")
    trained = run_measured(
        [
            python,
            REFERENCE,
            "train",
            "--root",
            nnunet_root,
            "--dataset-id",
            DATASET_ID,
            "--configuration",
            "3d_fullres",
            "--iterations",
            iterations,
            "--device",
            device,
        ],
        WORK / "logs" / "train.log",
    )
    stamp.write_text(json.dumps(trained["result"]))
    return test_images, Path(trained["result"]["model"])


COMPILED = "toolkit, compiled"


def _ours_command(model: Path, images: Path, out: Path, device: str) -> list:
    """The toolkit's prediction of a folder, as a separate process (``_ours`` below)."""
    program = [sys.executable, "-m", "bench.predict", "_ours"]
    return program + ["--model", model, "--input", images, "--output", out, "--device", device]


def _slug(tool: str) -> str:
    return {"nnU-Net v2": "nnunet", "toolkit": "toolkit", COMPILED: "toolkit_compiled"}[tool]


def predict_runs(
    test_images: Path, model: Path, device: str, repeats: int, cases: int, compiled: bool
) -> tuple[list[dict], dict]:
    python = str(nnunet_python())
    rows, outputs = [], {}
    settings = [("mirroring", False), ("no mirroring", True)]
    tools = ["nnU-Net v2", "toolkit"] + ([COMPILED] if compiled else [])
    for label, no_tta in settings:
        for tool in tools:
            runs = []
            for r in range(repeats):
                out = WORK / "out" / f"{_slug(tool)}_{'notta' if no_tta else 'tta'}"
                if out.exists():
                    shutil.rmtree(out)
                if tool != "nnU-Net v2":
                    cmd = _ours_command(model, test_images, out, device)
                    cmd += ["--compile"] if tool == COMPILED else []
                else:
                    cmd = [
                        python,
                        REFERENCE,
                        "predict",
                        "--model",
                        model,
                        "--input",
                        test_images,
                        "--output",
                        out,
                        "--device",
                        device,
                        "--processes",
                        "1",
                    ]
                cmd += ["--folds", "0"] + (["--no-tta"] if no_tta else [])
                harness.log(f"{tool}, {label}, run {r + 1}/{repeats}")
                runs.append(
                    run_measured(
                        cmd,
                        WORK / "logs" / f"{_slug(tool)}_{label.replace(' ', '_')}_{r}.log",
                        env=_env(),
                    )
                )
                outputs[(tool, label)] = out
            per_case = statistics.median(x["result"]["seconds"] / cases for x in runs)
            extra = {}
            if tool != "nnU-Net v2":
                # the cases after the first (which pays a compile): compiled vs eager, same cases
                extra["later_cases_seconds"] = statistics.median(
                    sum(x["result"]["case_seconds"][1:]) for x in runs
                )
            rows.append(
                {
                    "tool": tool,
                    "setting": label,
                    "seconds_per_case": per_case,
                    **extra,
                    "wall_per_case": statistics.median(x["wall_s"] / cases for x in runs),
                    "tree_peak_gb": max(x["tree_peak_gb"] for x in runs),
                    "process_peak_gb": max(x["process_peak_gb"] for x in runs),
                    "runs": runs,
                }
            )
    agreement = {
        label: compare_folders(outputs[("toolkit", label)], outputs[("nnU-Net v2", label)], [1, 2])
        for label, _ in settings
    }
    if compiled:
        for label, _ in settings:
            agreement[f"{label}: compiled vs eager toolkit"] = compare_folders(
                outputs[(COMPILED, label)], outputs[("toolkit", label)], [1, 2]
            )
    return rows, agreement


def bf16_run(test_images: Path, model: Path, cases: int, reference_out: Path) -> dict:
    out = WORK / "out" / "toolkit_bf16"
    if out.exists():
        shutil.rmtree(out)
    cmd = _ours_command(model, test_images, out, "cpu") + ["--folds", "0", "--precision", "bf16"]
    harness.log("toolkit, mirroring, bf16 autocast")
    run = run_measured(cmd, WORK / "logs" / "toolkit_bf16.log", env=_env())
    return {
        "seconds_per_case": run["result"]["seconds"] / cases,
        "tree_peak_gb": run["tree_peak_gb"],
        "agreement_with_fp32": compare_folders(out, reference_out, [1, 2]),
    }


def ct_run(device: str) -> dict:
    env = _env()
    image = WORK / "ct" / "ct_large_0000.nii.gz"
    model = WORK / "ct" / "models" / "3d_fullres"
    harness.log(f"CT-sized volume {CT_SHAPE}: writing the image and a model of the CT plan")
    run_measured(
        [sys.executable, "-m", "bench.predict", "_ct_model", "--model", model, "--image", image]
        + (["--full"] if device == "cuda" else []),
        WORK / "logs" / "ct_model.log",
        env=env,
    )
    out = WORK / "ct" / "out"
    if out.exists():
        shutil.rmtree(out)
    harness.log("CT-sized volume: predicting (read, preprocess, sliding window, export, write)")
    cmd = [
        sys.executable,
        "-m",
        "bench.predict",
        "_ours",
        "--model",
        model,
        "--input",
        image,
        "--output",
        out,
        "--device",
        device,
        "--folds",
        "0",
        "--no-tta",
    ]
    run = run_measured(cmd, WORK / "logs" / "ct_predict.log", env=env)
    result = {
        "shape_zyx": list(CT_SHAPE),
        "voxels": math.prod(CT_SHAPE),
        "patch": list(CT_PATCH),
        "features": list(CT_FULL_FEATURES if device == "cuda" else CT_NARROW_FEATURES),
        "windows": run["result"]["windows"],
        "seconds": run["result"]["seconds"],
        "wall_s": run["wall_s"],
        "tree_peak_gb": run["tree_peak_gb"],
        "process_peak_gb": run["process_peak_gb"],
    }
    if device == "cpu":
        harness.log("one full-width 128^3 window: activation memory")
        window = run_measured(
            [sys.executable, "-m", "bench.predict", "_window"],
            WORK / "logs" / "ct_window.log",
            env=env,
        )
        result["full_width_window"] = window["result"]
        result["full_width_bound_gb"] = result["tree_peak_gb"] + window["result"]["activation_gb"]
    return result


def markdown(data: dict) -> str:
    lines = [f"# Prediction: toolkit vs nnU-Net v2 ({data['device']})", ""]
    lines.append(
        f"Machine: {data['machine']['cpus']} CPUs, load average {data['machine']['load_average']} at start, {data['machine']['date']}. "
        f"nnU-Net: {data.get('nnunet', {})} ({data.get('reference_python', 'its own venv, bench/.venv-nnunet')}), driven through its Python API "
        "(`bench/nnunet_v2_reference.py`: `nnUNetPredictor.predict_from_files`, 1 preprocessing and 1 export process); the toolkit "
        "reads the same nnU-Net v2 model folder (identical weights). One process per run; peak memory = the sum of the resident "
        "memory of the process tree (sampled every 0.1 s) and the largest single process. Seconds per case are measured inside "
        "each tool's prediction call (reading, preprocessing, sliding window, export, writing; not the start-up)."
    )
    if "speed" in data:
        s = data["speed"]
        lines += [
            "",
            f"## 3d_fullres, {s['cases']} synthetic CT cases of {s['case_shape']}, patch {s['patch']}, features {s['features']}",
            "",
        ]
        rows = []
        by = {(r["tool"], r["setting"]): r for r in s["rows"]}
        for r in s["rows"]:
            ref = by[("nnU-Net v2", r["setting"])]
            rows.append(
                [
                    r["tool"],
                    r["setting"],
                    r["seconds_per_case"],
                    r["wall_per_case"],
                    r["tree_peak_gb"],
                    r["process_peak_gb"],
                    ref["seconds_per_case"] / r["seconds_per_case"],
                ]
            )
        lines.append(
            harness.markdown_table(
                [
                    "tool",
                    "setting",
                    "s/case",
                    "wall s/case",
                    "peak GB (tree)",
                    "peak GB (largest process)",
                    "speed-up vs nnU-Net",
                ],
                rows,
            )
        )
        compiled_rows = [r for r in s["rows"] if r["tool"] == COMPILED]
        if compiled_rows:
            parts = []
            for r in compiled_rows:
                eager = by[("toolkit", r["setting"])]["later_cases_seconds"]
                if not r["later_cases_seconds"]:  # --cases 1: nothing after the first case
                    continue
                parts.append(
                    f"{r['setting']}: {eager:.3g} s eager, {r['later_cases_seconds']:.3g} s compiled "
                    f"({eager / r['later_cases_seconds']:.2f}x)"
                )
            lines += [
                "",
                f"`toolkit` is `toolkit predict`; `{COMPILED}` is `toolkit predict --compile` "
                "(torch.compile, weights frozen on the CPU), whose s/case includes the one-time compile. "
                "Without it, on the cases after the first (the same cases in both runs): "
                + ("; ".join(parts) or "not measured with a single case")
                + ".",
            ]
        lines += [
            "",
            "Agreement of the label maps (Dice per class, worst case; toolkit vs nnU-Net v2 unless said):",
            "",
        ]
        rows = [
            [k, v["min_dice_per_class"], v["geometry_equal"]] for k, v in s["agreement"].items()
        ]
        lines.append(
            harness.markdown_table(["setting", "min Dice per class", "same geometry"], rows)
        )
        if "bf16_skipped" in s:
            lines += ["", f"bf16 autocast on the CPU: not measured; {s['bf16_skipped']}."]
        if "bf16" in s:
            b = s["bf16"]
            fp32 = by[("toolkit", "mirroring")]["seconds_per_case"]
            lines += [
                "",
                f"Toolkit with bf16 autocast on the CPU (mirroring): {b['seconds_per_case']:.3g} s/case ({fp32 / b['seconds_per_case']:.2f}x its fp32), "
                f"Dice vs its fp32 labels per class (worst case): {b['agreement_with_fp32']['min_dice_per_class']}.",
            ]
    if "ct" in data:
        c = data["ct"]
        lines += [
            "",
            f"## CT-sized volume {c['shape_zyx'][0]}x{c['shape_zyx'][1]}x{c['shape_zyx'][2]} ({c['voxels'] / 1e6:.0f} M voxels) on the {'GPU' if data['device'] == 'cuda' else 'CPU'}",
            "",
            f"Plan: patch {c['patch']}, 6 stages, features {c['features']}, 3 classes, no mirroring, {c['windows']} windows. "
            f"End to end (read .nii.gz, preprocess, sliding window, export, write): {c['seconds']:.0f} s, "
            f"peak memory {c['tree_peak_gb']:.2f} GB (process tree), {c['process_peak_gb']:.2f} GB (largest process); limit {MEMORY_LIMIT_GB:g} GB.",
        ]
        if "full_width_window" in c:
            w = c["full_width_window"]
            lines.append(
                f"A full-width window (features {list(CT_FULL_FEATURES)}) adds {w['activation_gb']:.2f} GB of activations "
                f"(one forward pass took {w['seconds']:.1f} s here): full-width bound {c['full_width_bound_gb']:.2f} GB."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", type=int, default=3, help="test cases predicted per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool and setting (median)")
    parser.add_argument(
        "--iterations", type=int, default=10, help="training iterations of nnU-Net v2's one epoch"
    )
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--ct-only", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the toolkit's torch.compile runs"
    )
    parser.add_argument(
        "--backends",
        action="store_true",
        help="only the network runtimes (torch fp32/bf16, OpenVINO, ONNX Runtime) on the same model",
    )
    parser.add_argument(
        "--image-record",
        action="append",
        default=[],
        help="NAME=export.json of a built image (size, start-to-output time), with --backends",
    )
    parser.add_argument(
        "--images-only",
        action="store_true",
        help="with --backends: only (re)read the --image-record files into the last results",
    )
    args = parser.parse_args(argv)
    if args.backends:
        return backends(args)

    name = "predict" if args.device == "cpu" else "predict_cuda"
    data: dict = {"device": args.device, "machine": harness.machine()}
    previous = harness.RESULTS / f"{name}.json"
    if (args.skip_ct or args.ct_only) and previous.is_file():
        # a partial run keeps the other part of the last results
        kept = json.loads(previous.read_text())
        data.update(
            {k: v for k, v in kept.items() if k in ("speed", "nnunet", "reference_python", "ct")}
        )
    if not args.ct_only:
        test_images, model = prepare_task(args.cases, args.iterations, args.device)
        data["nnunet"] = nnunet_versions()
        data["reference_python"] = (
            f"Python {os.environ['TOOLKIT_NNUNET_PYTHON']} with nnU-Net's packages added"
            if os.environ.get("TOOLKIT_NNUNET_PYTHON")
            else "its own venv, bench/.venv-nnunet"
        )
        plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
        rows, agreement = predict_runs(
            test_images, model, args.device, args.repeats, args.cases, not args.no_compile
        )
        data["speed"] = {
            "cases": args.cases,
            "case_shape": "64x80x72",
            "patch": plans["patch_size"],
            "features": plans["architecture"]["arch_kwargs"]["features_per_stage"],
            "rows": rows,
            "agreement": agreement,
        }
        harness.write_results(name, data, markdown(data))  # kept if the CT part is stopped
        if args.device == "cpu" and not args.no_bf16:
            if cpu_has_native_bf16():
                data["speed"]["bf16"] = bf16_run(
                    test_images, model, args.cases, WORK / "out" / "toolkit_tta"
                )
            else:
                data["speed"]["bf16_skipped"] = (
                    "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), where torch "
                    "emulates it: one run took over 10 minutes against 53 s in float32"
                )
    if not args.skip_ct:
        data["ct"] = ct_run(args.device)
    harness.write_results(name, data, markdown(data))
    print(markdown(data))
    return 0


def backends(args: argparse.Namespace) -> int:
    from bench import predict_backends
    from toolkit.inference.runtimes import describe_backends

    if args.images_only:
        data = json.loads((harness.RESULTS / "predict_backends.json").read_text())
        data["images"] = predict_backends.image_rows(args.image_record)
        harness.write_results("predict_backends", data, predict_backends.markdown(data))
        return 0
    data: dict = {"machine": harness.machine(), "cpu": predict_backends.cpu_flags()}
    test_images, model = prepare_task(args.cases, args.iterations, "cpu")
    plans = json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]
    data.update(
        {
            "versions": describe_backends(["torch", "openvino", "onnxruntime"]),
            "cases": args.cases,
            "case_shape": "64x80x72",
            "patch": plans["patch_size"],
            "features": plans["architecture"]["arch_kwargs"]["features_per_stage"],
        }
    )
    work = WORK / "backends"
    data.update(
        predict_backends.run(
            test_images,
            model,
            args.cases,
            args.repeats,
            work,
            _ours_command,
            lambda cmd, log: run_measured(cmd, log, env=_env()),
            compare_folders,
            cpu_has_native_bf16(),
        )
    )
    data["images"] = predict_backends.image_rows(args.image_record)
    harness.write_results("predict_backends", data, predict_backends.markdown(data))
    print(predict_backends.markdown(data))
    return 0


def _subcommand(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    o = sub.add_parser("_ours")
    for flag in ("--model", "--input", "--output"):
        o.add_argument(flag, required=True)
    o.add_argument("--device", default="cpu")
    o.add_argument("--folds", default="0")
    o.add_argument("--no-tta", action="store_true")
    o.add_argument("--precision", default="auto")
    o.add_argument("--save-probabilities", action="store_true")
    o.add_argument("--compile", action="store_true")
    o.add_argument("--backend", default=None)
    o.set_defaults(func=_ours)
    c = sub.add_parser("_ct_model")
    c.add_argument("--model", required=True)
    c.add_argument("--image", required=True)
    c.add_argument("--full", action="store_true")
    c.set_defaults(func=_ct_model)
    w = sub.add_parser("_window")
    w.set_defaults(func=_window)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _subcommand(sys.argv[1:])
    else:
        sys.exit(main(sys.argv[1:]))
