"""Run by the nnU-Net venv's python: compare nnU-Net's preprocessed cases with ours.

Usage: python nnunet_case_compare.py NNUNET_FOLDER OUR_FOLDER OUT_JSON

Reads nnU-Net v2's blosc2 cases with its own loader and our ``.npy`` cases with numpy, and
writes per case: both shapes, the largest absolute difference of the normalized images, the
share of label voxels that agree, and the number of oversampling locations per class.
Imports nothing from the toolkit, so it runs in the reference's environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2


def main(theirs: str, ours: str, out: str) -> None:
    dataset = nnUNetDatasetBlosc2(theirs)
    rows = []
    for case in sorted(dataset.identifiers):
        data, seg, _, props = dataset.load_case(case)
        data, seg = np.asarray(data), np.asarray(seg)
        our_data = np.load(Path(ours) / f"{case}.npy", mmap_mode="r")
        our_seg = np.load(Path(ours) / f"{case}_seg.npy", mmap_mode="r")
        our_props = json.loads((Path(ours) / f"{case}.json").read_text())
        row = {
            "case": case,
            "shape_nnunet": list(data.shape),
            "shape_ours": list(our_data.shape),
            "same_shape": list(data.shape) == list(our_data.shape),
            "locations_nnunet": {
                str(k): len(v) for k, v in props.get("class_locations", {}).items()
            },
            "locations_ours": {k: len(v) for k, v in our_props.get("class_locations", {}).items()},
        }
        if row["same_shape"]:
            diff = np.abs(data.astype(np.float64) - np.asarray(our_data, dtype=np.float64))
            row["max_abs_diff"] = float(diff.max())
            row["mean_abs_diff"] = float(diff.mean())
            row["label_agreement"] = float(
                (seg.astype(np.int64) == np.asarray(our_seg, dtype=np.int64)).mean()
            )
        rows.append(row)
    Path(out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
