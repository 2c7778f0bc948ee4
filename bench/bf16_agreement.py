"""bf16 against float32 on a trained model: do the labels agree, and where do they not?

``python -m bench.bf16_agreement --workspace demo/workspace --dataset Task901_SynthMR``
(after ``make demo``; any dataset whose selection was exported with ``export-container``,
which holds its ONNX networks in ``export/context/model``).

Every training and test image of the dataset's raw folder is predicted by the selected
configuration's fold 0 with OpenVINO (``--precision auto``: bf16 on a CPU with AVX-512 BF16
or AMX, against ``fp32``) and with torch (``bf16`` autocast against ``fp32``), with and
without mirroring. Per run pair:

* Dice per class of the final label maps (the input's grid, after the export), the worst case
  and all voxels pooled;
* on the network's grid, each voxel's float32 margin ``m`` between its two largest logits
  (classes ``a`` and ``b``) and the bf16 run's error on that margin,
  ``e = |(z_a - z_b)_bf16 - (z_a - z_b)_fp32|``: for the voxels whose label flips, how many
  have ``m`` within one bf16 rounding of the larger logit (``ulp = 2^(floor(log2 max(|z_a|,
  |z_b|)) - 7)``, bf16 keeping 8 significant bits) and how many within the error ``e`` that
  bf16 makes on ordinary voxels (its 99.9th percentile and maximum over all voxels).

Results: ``bench/results/bf16_agreement.json`` + ``.md``. Figures only: the precision
defaults are not changed by this benchmark.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench import harness
from toolkit.core.plans import Plans
from toolkit.inference.export import logits_to_original
from toolkit.inference.options import ModelOptions
from toolkit.inference.runtime import load_predictor
from toolkit.io.dataset_json import training_cases
from toolkit.io.images import read_channels
from toolkit.preprocessing.case import preprocess_case
from toolkit.workspace import DatasetPaths, ExportPaths

# (backend, model folder kind, the reduced precision, its float32 reference)
PAIRS = (("openvino", "onnx", "auto", "fp32"), ("torch", "torch", "bf16", "fp32"))


def bf16_ulp(values: np.ndarray) -> np.ndarray:
    """One unit in the last place of a bf16 number of these magnitudes (8 significant bits)."""
    magnitude = np.maximum(np.abs(values), np.finfo(np.float32).tiny)
    return np.exp2(np.floor(np.log2(magnitude)) - 7)


def margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per voxel: the two largest classes ``a``, ``b`` and logits ``z_a``, ``z_b``."""
    order = np.argsort(logits, axis=0)
    a, b = order[-1], order[-2]
    za = np.take_along_axis(logits, a[None], 0)[0]
    zb = np.take_along_axis(logits, b[None], 0)[0]
    return a, b, za, zb


def flip_analysis(reference: np.ndarray, reduced: np.ndarray) -> dict:
    """Where the reduced run's argmax differs from the float32 run's, on the network's grid."""
    a, b, za, zb = margins(reference)
    margin = za - zb
    ra = np.take_along_axis(reduced, a[None], 0)[0]
    rb = np.take_along_axis(reduced, b[None], 0)[0]
    error = np.abs((ra - rb) - margin)
    flipped = reduced.argmax(0) != a
    ulp = bf16_ulp(np.maximum(np.abs(za), np.abs(zb)))
    return {
        "voxels": int(margin.size),
        "flipped": int(flipped.sum()),
        "flipped_margins": margin[flipped].astype(float).tolist(),
        "flipped_ulps": (margin[flipped] / ulp[flipped]).astype(float).tolist(),
        "flipped_to_second": int((reduced.argmax(0)[flipped] == b[flipped]).sum()),
        "error_p50": float(np.percentile(error, 50)),
        "error_p99": float(np.percentile(error, 99)),
        "error_p999": float(np.percentile(error, 99.9)),
        "error_max": float(error.max()),
        "within_one_ulp": int((margin <= ulp).sum()),
    }


def dice(x: np.ndarray, y: np.ndarray, labels: list[int]) -> dict[int, list[int]]:
    """Per class: [overlap, |x|, |y|] (summed over cases before dividing)."""
    return {
        c: [int(np.logical_and(x == c, y == c).sum()), int((x == c).sum()), int((y == c).sum())]
        for c in labels
    }


def predictors(paths: DatasetPaths, config: str, kind: str, backend: str, precision: str):
    model = (
        DatasetPaths(ExportPaths(paths.export).model).model_dir(config)
        if kind == "onnx"
        else paths.model_dir(config)
    )
    return {
        mirroring: load_predictor(
            model,
            ModelOptions(
                folds=[0],
                device="cpu",
                use_mirroring=mirroring,
                precision=precision,
                backend=backend,
            ),
        )
        for mirroring in (False, True)
    }


def as_array(logits) -> np.ndarray:
    """Per-class logits (numpy arrays or torch tensors of any float type) as float32."""
    arrays = []
    for z in logits:
        if hasattr(z, "detach"):  # a torch tensor, maybe bf16
            z = z.detach().float().cpu().numpy()
        arrays.append(np.asarray(z, dtype=np.float32))
    return np.stack(arrays)


def run(paths: DatasetPaths, config: str) -> dict:
    plans = Plans.load(paths.plans_json)
    configuration = plans.configuration(config)
    labels = [v for v in range(1, plans.num_classes)]
    cases = [(c.case, list(c.images)) for c in training_cases(paths)]
    test_dir = paths.root / "raw" / "imagesTs"
    for image in sorted(test_dir.glob("*_0000.nii.gz")) if test_dir.is_dir() else []:
        stem = image.name[: -len("_0000.nii.gz")]
        cases.append((stem, sorted(test_dir.glob(f"{stem}_*.nii.gz"))))
    results: dict = {"cases": [c for c, _ in cases], "pairs": {}}
    for backend, kind, reduced_precision, reference_precision in PAIRS:
        reduced = predictors(paths, config, kind, backend, reduced_precision)
        reference = predictors(paths, config, kind, backend, reference_precision)
        for mirroring in (False, True):
            name = f"{backend} {reduced_precision} vs {reference_precision}, mirroring {mirroring}"
            harness.log(name)
            pooled: dict[int, list[int]] = {c: [0, 0, 0] for c in labels}
            per_case, flips, seconds = [], [], {"reduced": 0.0, "reference": 0.0}
            for case, images in cases:
                image, geometry = read_channels(images)
                data, _, props = preprocess_case(image, geometry, plans, configuration, case=case)
                start = time.perf_counter()
                low = as_array(reduced[mirroring].predict_logits(data))
                seconds["reduced"] += time.perf_counter() - start
                start = time.perf_counter()
                high = as_array(reference[mirroring].predict_logits(data))
                seconds["reference"] += time.perf_counter() - start
                flips.append(flip_analysis(high, low))
                a, _ = logits_to_original(list(low), props, plans, configuration, False)
                b, _ = logits_to_original(list(high), props, plans, configuration, False)
                counts = dice(np.asarray(a), np.asarray(b), labels)
                for c in labels:
                    pooled[c] = [p + q for p, q in zip(pooled[c], counts[c], strict=True)]
                per_case.append(
                    {
                        "case": case,
                        "dice": {
                            c: (2 * o / (x + y) if x + y else 1.0)
                            for c, (o, x, y) in counts.items()
                        },
                        "differing_voxels": int((np.asarray(a) != np.asarray(b)).sum()),
                    }
                )
            results["pairs"][name] = summarize(per_case, flips, pooled, seconds)
    return results


def summarize(per_case: list, flips: list, pooled: dict, seconds: dict) -> dict:
    margins_ = np.asarray([m for f in flips for m in f["flipped_margins"]], dtype=float)
    ulps = np.asarray([u for f in flips for u in f["flipped_ulps"]], dtype=float)
    error_p999 = max(f["error_p999"] for f in flips)
    error_max = max(f["error_max"] for f in flips)
    return {
        "min_dice_per_class": {c: min(p["dice"][c] for p in per_case) for c in per_case[0]["dice"]},
        "pooled_dice_per_class": {
            c: (2 * o / (x + y) if x + y else 1.0) for c, (o, x, y) in pooled.items()
        },
        "differing_voxels_original_grid": sum(p["differing_voxels"] for p in per_case),
        "network_grid_voxels": sum(f["voxels"] for f in flips),
        "flipped_voxels": int(margins_.size),
        "flipped_to_second_class": sum(f["flipped_to_second"] for f in flips),
        "flipped_margin_max": float(margins_.max()) if margins_.size else None,
        "flipped_margin_p50": float(np.median(margins_)) if margins_.size else None,
        "flipped_within_one_ulp": int((ulps <= 1).sum()),
        "flipped_within_two_ulps": int((ulps <= 2).sum()),
        "flipped_ulps_max": float(ulps.max()) if ulps.size else None,
        "margin_error_p50": float(np.median([f["error_p50"] for f in flips])),
        "margin_error_p99_max": max(f["error_p99"] for f in flips),
        "margin_error_p999_max": error_p999,
        "margin_error_max": error_max,
        "flipped_within_error_p999": int((margins_ <= error_p999).sum()),
        "flipped_within_error_max": int((margins_ <= error_max).sum()),
        "voxels_within_one_ulp": sum(f["within_one_ulp"] for f in flips),
        "seconds_reduced": round(seconds["reduced"], 1),
        "seconds_reference": round(seconds["reference"], 1),
        "per_case": per_case,
    }


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# bf16 against float32 on a trained model",
        "",
        f"Machine: {m['cpus']} CPUs, flags {', '.join(m['cpu_flags'])}, load average "
        f"{m['load_average']} at start, {m['date']}. Model: {data['model']}; "
        f"{len(data['cases'])} cases (the dataset's training and test images). OpenVINO "
        "`auto` is its own precision choice (bf16 on this CPU); torch `bf16` is its autocast.",
        "",
        harness.markdown_table(
            ["runs", "min Dice per class", "pooled Dice per class", "differing voxels"],
            [
                [
                    name,
                    {k: round(v, 4) for k, v in p["min_dice_per_class"].items()},
                    {k: round(v, 5) for k, v in p["pooled_dice_per_class"].items()},
                    p["differing_voxels_original_grid"],
                ]
                for name, p in data["pairs"].items()
            ],
        ),
        "",
        "Where the labels flip, on the network's grid: each flipped voxel's float32 margin "
        "between its two largest logits, in bf16 units of the larger logit (ulp) and against "
        "the error bf16 makes on that margin over all voxels:",
        "",
        harness.markdown_table(
            [
                "runs",
                "flipped / voxels",
                "to the 2nd class",
                "margin <= 1 ulp",
                "<= 2 ulp",
                "largest flipped margin (ulp)",
                "margin error p50 / p99.9 / max",
                "flipped margin <= error p99.9",
                "<= error max",
            ],
            [
                [
                    name,
                    f"{p['flipped_voxels']} / {p['network_grid_voxels']}",
                    p["flipped_to_second_class"],
                    p["flipped_within_one_ulp"],
                    p["flipped_within_two_ulps"],
                    "-"
                    if p["flipped_margin_max"] is None
                    else f"{p['flipped_margin_max']:.3g} ({p['flipped_ulps_max']:.1f})",
                    f"{p['margin_error_p50']:.3g} / {p['margin_error_p999_max']:.3g} / "
                    f"{p['margin_error_max']:.3g}",
                    p["flipped_within_error_p999"],
                    p["flipped_within_error_max"],
                ]
                for name, p in data["pairs"].items()
            ],
        ),
    ]
    if data.get("note"):
        lines += ["", data["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("demo/workspace"))
    parser.add_argument("--dataset", default="Task901_SynthMR")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    paths = DatasetPaths(args.workspace / args.dataset)
    data: dict = {
        "machine": harness.machine(),
        "model": f"{args.dataset} {args.configuration} fold 0 ({args.workspace})",
    }
    data.update(run(paths, args.configuration))
    data["machine_at_end"] = harness.machine()
    if args.note:
        data["note"] = args.note
    harness.write_results("bf16_agreement", data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
