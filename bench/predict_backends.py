"""Prediction backends on identical weights: torch fp32, torch bf16, OpenVINO (its automatic
precision, and fp32 forced), ONNX Runtime.

Run by ``python -m bench.predict --backends`` on the nnU-Net v2 model that ``bench.predict``
trains (a full-width ``3d_fullres``, read directly by the torch backend; exported once with
``toolkit export-model --model DIR --format onnx`` and imported for the runtimes). Every
backend predicts the same test cases with and without mirroring, one process per run
(``toolkit predict --backend B --precision P``); seconds per case inside the prediction call,
the process tree's peak memory. Labels are compared per class: the float32 runtimes with
torch fp32, each bf16 run with its own backend's fp32 run. The CPU's flags are recorded (AMX
changes the ranking: OpenVINO runs convolutions in bf16 on AMX and AVX-512 BF16 CPUs by
itself). Image sizes and the time from a container's start to its first output come from
``export.json`` records of ``toolkit export-container`` given with ``--image-record``.
Results: ``bench/results/predict_backends.json`` + ``.md``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from bench import harness

# (backend, precision): what `toolkit predict --backend B --precision P` runs
ROWS = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("openvino", "auto"),
    ("openvino", "fp32"),
    ("onnxruntime", "fp32"),
)
# what each row's labels are judged against: float32 runtimes against torch fp32, bf16 (or
# automatic) runs against their own backend's fp32
REFERENCE_ROW = {
    ("torch", "bf16"): ("torch", "fp32"),
    ("openvino", "auto"): ("openvino", "fp32"),
    ("openvino", "fp32"): ("torch", "fp32"),
    ("onnxruntime", "fp32"): ("torch", "fp32"),
}
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    return {"model": model, **{f: f in flags for f in CPU_FLAGS}}


def onnx_model(nnunet_model: Path, work: Path) -> Path:
    """The nnU-Net v2 model folder exported as ONNX networks and imported: the runtimes' model."""
    from toolkit.modelzip.stage import export_model_folder, import_model

    archive = work / "onnx.zip"
    harness.log("exporting the nnU-Net v2 model folder as ONNX networks")
    done = export_model_folder(nnunet_model, archive, [0])
    imported = import_model(archive, work / "ws", force=True)
    return imported.paths.model_dir(done.manifest.configurations[0])


def _slug(backend: str, precision: str, mirroring: bool) -> str:
    return f"{backend}_{precision}_{'tta' if mirroring else 'notta'}"


def run(
    test_images: Path,
    nnunet_model: Path,
    cases: int,
    repeats: int,
    work: Path,
    ours_command,
    run_measured,
    compare_folders,
    native_bf16: bool,
) -> dict:
    """Every row with and without mirroring; ``ours_command`` etc. are bench.predict's."""
    runtime_model = onnx_model(nnunet_model, work)
    rows, outputs = [], {}
    for mirroring in (True, False):
        for backend, precision in ROWS:
            if (backend, precision) == ("torch", "bf16") and not native_bf16:
                continue
            model = nnunet_model if backend == "torch" else runtime_model
            out = work / "out" / _slug(backend, precision, mirroring)
            runs = []
            for r in range(repeats):
                if out.exists():
                    shutil.rmtree(out)
                cmd = ours_command(model, test_images, out, "cpu")
                cmd += ["--folds", "0", "--precision", precision, "--backend", backend]
                cmd += [] if mirroring else ["--no-tta"]
                harness.log(f"{backend} {precision}, mirroring {mirroring}, run {r + 1}")
                runs.append(
                    run_measured(
                        cmd, work / "logs" / f"{_slug(backend, precision, mirroring)}_{r}.log"
                    )
                )
            outputs[(backend, precision, mirroring)] = out
            rows.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "mirroring": mirroring,
                    "seconds_per_case": statistics.median(
                        x["result"]["seconds"] / cases for x in runs
                    ),
                    "later_cases_seconds": statistics.median(
                        statistics.mean(x["result"]["case_seconds"][1:] or [0.0]) for x in runs
                    ),
                    "wall_per_case": statistics.median(x["wall_s"] / cases for x in runs),
                    "tree_peak_gb": max(x["tree_peak_gb"] for x in runs),
                    "process_peak_gb": max(x["process_peak_gb"] for x in runs),
                }
            )
    agreement = {}
    for (backend, precision, mirroring), out in outputs.items():
        reference = REFERENCE_ROW.get((backend, precision))
        if reference is None or (*reference, mirroring) not in outputs:
            continue
        name = f"{backend} {precision} vs {reference[0]} {reference[1]}, mirroring {mirroring}"
        agreement[name] = compare_folders(out, outputs[(*reference, mirroring)], [1, 2])
    return {"rows": rows, "agreement": agreement}


def image_rows(records: list[str]) -> list[dict]:
    """Size, compressed size and start-to-output time of built images (their export.json)."""
    found = []
    for entry in records:
        name, _, path = entry.partition("=")
        record = json.loads(Path(path).read_text())
        runs = record.get("test_runs") or [record.get("test_run") or {}]
        found.append(
            {
                "image": name,
                "runtime": record.get("runtime", "torch"),
                "image_gb": (record.get("image_bytes") or 0) / 1e9,
                "saved_gz_gb": ((record.get("archive") or {}).get("size_bytes") or 0) / 1e9,
                "start_to_output_s": runs[0].get("seconds"),
                "job_s": runs[0].get("job_seconds"),
                "peak_memory_mb": runs[0].get("peak_memory_mb"),
                "identical_to_predict": runs[0].get("identical"),
            }
        )
    return found


def markdown(data: dict) -> str:
    m, flags = data["machine"], data["cpu"]
    lines = [
        "# Prediction backends: torch, OpenVINO, ONNX Runtime (CPU)",
        "",
        f"Machine: {m['cpus']} CPUs ({flags['model']}), load average {m['load_average']} at "
        f"start, {m['date']}. CPU flags: "
        + ", ".join(f"{f} {'yes' if flags[f] else 'no'}" for f in CPU_FLAGS)
        + f". Versions: {data['versions']}.",
        "",
        f"Model: nnU-Net v2 3d_fullres trained by `bench.predict` (patch {data['patch']}, features "
        f"{data['features']}), fold 0; the torch rows read its model folder, the runtimes its "
        "ONNX export (`toolkit export-model --model DIR --format onnx`). "
        f"{data['cases']} synthetic CT cases of {data['case_shape']}; one process per run; "
        "s/case inside `toolkit predict`'s call (read, preprocess, sliding window, export, "
        "write); later cases: the mean over the cases after the first (no one-time set-up); "
        "peak: the process tree's resident memory.",
        "",
    ]
    later = data["cases"] > 1  # with one case there is no case after the first
    table = [
        [
            r["backend"],
            r["precision"],
            "yes" if r["mirroring"] else "no",
            r["seconds_per_case"],
            *([r["later_cases_seconds"]] if later else []),
            r["tree_peak_gb"],
        ]
        for r in data["rows"]
    ]
    headers = ["backend", "precision", "mirroring", "s/case"]
    headers += ["s/case after the first"] if later else []
    lines.append(harness.markdown_table([*headers, "peak GB"], table))
    lines += ["", "Agreement of the label maps (Dice per class, worst case):", ""]
    lines.append(
        harness.markdown_table(
            ["runs", "min Dice per class", "same geometry"],
            [
                [k, v["min_dice_per_class"], v["geometry_equal"]]
                for k, v in data["agreement"].items()
            ],
        )
    )
    if data.get("images"):
        lines += [
            "",
            "Images (`toolkit export-container --runtime R`, podman, built offline from the "
            "wheelhouse) of the tiny two-fold model of `tests/container` (one 8x16x16 case: "
            "the time from the container's start to its output is the start-up: imports, "
            "reading the networks, one case):",
            "",
        ]
        lines.append(
            harness.markdown_table(
                [
                    "image",
                    "runtime",
                    "size GB",
                    "saved .tar.gz GB",
                    "container start to output s",
                    "job s",
                    "peak MB",
                    "labels = predict",
                ],
                [
                    [
                        i["image"],
                        i["runtime"],
                        i["image_gb"],
                        i["saved_gz_gb"],
                        i["start_to_output_s"],
                        i["job_s"],
                        i["peak_memory_mb"],
                        i["identical_to_predict"],
                    ]
                    for i in data["images"]
                ],
            )
        )
    if data.get("note"):
        lines += ["", data["note"]]
    return "\n".join(lines) + "\n"
