"""Peak memory of one case through one stage, in a fresh process (run by the CT memory bench).

    python -m bench.case_peaks {fingerprint,preprocess} WORKSPACE DATASET CASE [CONFIGURATION]

Runs the stage's per-case work (what one worker process does for one case) and prints one
JSON line: the case, its voxels before and after resampling, the process's peak resident
memory (``getrusage``), the stage's own estimate of that peak (what caps its workers), and
the seconds taken. A fresh process per case, so each peak is that case's alone.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

from toolkit.core.plans import dataset_plans
from toolkit.core.resampling import case_target_spacing, compute_new_shape
from toolkit.io.dataset_json import load_dataset_info, training_cases
from toolkit.io.images import read_geometry
from toolkit.parallel import WORKER_BYTES
from toolkit.workspace import DatasetPaths


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main(argv: list[str]) -> int:
    stage, workspace, dataset, case = argv[:4]
    config_name = argv[4] if len(argv) > 4 else "3d_fullres"
    paths = DatasetPaths(Path(workspace) / dataset)
    info = load_dataset_info(paths)
    files = next(c for c in training_cases(paths, info) if c.case == case)
    geometry = read_geometry(files.images[0])
    voxels = math.prod(geometry.shape_zyx)
    record = {"stage": stage, "case": case, "shape": list(geometry.shape_zyx)}
    record["spacing"] = list(geometry.spacing_zyx)
    base_mb = _rss_mb()
    start = time.perf_counter()
    if stage == "fingerprint":
        from toolkit.fingerprint.stage import _Job, _run_job, fingerprint_peak_bytes

        estimate = fingerprint_peak_bytes(voxels=voxels, channels=len(files.images))
        _run_job(_Job(files, tuple(info.label_values), 10**8, 1234))
    elif stage == "preprocess":
        from toolkit.preprocessing.stage import _Job, _run, preprocess_peak_bytes

        plans = dataset_plans(paths)
        configuration = plans.configuration(config_name)
        spacing_t = [geometry.spacing_zyx[a] for a in plans.transpose_forward]
        shape_t = [geometry.shape_zyx[a] for a in plans.transpose_forward]
        target = case_target_spacing(configuration, spacing_t)
        out_voxels = math.prod(compute_new_shape(shape_t, spacing_t, target))
        record["voxels_after_resampling"] = out_voxels
        estimate = preprocess_peak_bytes(
            voxels=voxels, voxels_after=out_voxels, channels=len(files.images)
        )
        with tempfile.TemporaryDirectory(dir=paths.root) as folder:
            _run(_Job(files, plans, configuration, folder))
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    record.update(
        voxels=voxels,
        seconds=time.perf_counter() - start,
        base_rss_mb=base_mb,
        peak_rss_mb=_rss_mb(),
        estimate_mb=(estimate + WORKER_BYTES) / 2**20,
    )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
