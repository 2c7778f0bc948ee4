"""Run by the nnU-Net venv's python (it has blosc2 and nnU-Net's own blosc2 case format).

Usage: python storage_reads.py FOLDER OUT_JSON CASES SIZE PATCH READS

Writes ``CASES`` cases of ``(1, SIZE, SIZE, SIZE)`` float32 (a smooth field plus noise, like a
normalized image) and int8 labels in two formats: plain ``.npy`` (what the toolkit stores)
and nnU-Net v2's blosc2 format (its ``nnUNetDatasetBlosc2.save_case`` with its own chunk and
block sizes for the patch). Then times ``READS`` random patch reads per format, each opening
the case as training does (``np.load(mmap_mode="r")``; nnU-Net's ``load_case``) and copying
one ``PATCH``-cubed patch of image and labels into memory. Imports nothing from the toolkit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from scipy import ndimage


def _case(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    field = ndimage.gaussian_filter(rng.normal(size=(size, size, size)).astype(np.float32), 4)
    field /= field.std()
    image = (field + 0.3 * rng.normal(size=field.shape)).astype(np.float32)[None]
    seg = np.zeros((1, size, size, size), dtype=np.int8)
    seg[0][field > 1.0] = 1
    seg[0][field > 2.0] = 2
    return image, seg


def _folder_bytes(folder: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(suffixes))


def main(folder: str, out: str, cases: str, size: str, patch: str, reads: str) -> None:
    root, n, size_, patch_, reads_ = Path(folder), int(cases), int(size), int(patch), int(reads)
    npy_dir, b2_dir = root / "npy", root / "blosc2"
    npy_dir.mkdir(parents=True, exist_ok=True)
    b2_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write = {"npy": 0.0, "blosc2": 0.0}
    names = [f"case_{i:03d}" for i in range(n)]
    for name in names:
        image, seg = _case(rng, size_)
        start = time.perf_counter()
        np.save(npy_dir / f"{name}.npy", image)
        np.save(npy_dir / f"{name}_seg.npy", seg)
        write["npy"] += time.perf_counter() - start
        start = time.perf_counter()
        blocks, chunks = comp_blosc2_params(image.shape, (patch_,) * 3, image.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, (patch_,) * 3, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(
            image,
            seg.astype(np.int16),
            {},
            str(b2_dir / name),
            chunks=chunks,
            blocks=blocks,
            chunks_seg=chunks_seg,
            blocks_seg=blocks_seg,
        )
        write["blosc2"] += time.perf_counter() - start
    b2 = nnUNetDatasetBlosc2(str(b2_dir))
    positions = [
        (names[rng.integers(n)], *rng.integers(0, size_ - patch_, size=3)) for _ in range(reads_)
    ]

    def read_npy(case, z, y, x):
        image = np.load(npy_dir / f"{case}.npy", mmap_mode="r")
        seg = np.load(npy_dir / f"{case}_seg.npy", mmap_mode="r")
        window = (slice(None), slice(z, z + patch_), slice(y, y + patch_), slice(x, x + patch_))
        return np.array(image[window]), np.array(seg[window])

    def read_b2(case, z, y, x):
        image, seg, _, _ = b2.load_case(case)
        window = (slice(None), slice(z, z + patch_), slice(y, y + patch_), slice(x, x + patch_))
        return np.asarray(image[window]), np.asarray(seg[window])

    result = {
        "cases": n,
        "shape": [1, size_, size_, size_],
        "patch": patch_,
        "reads": reads_,
        "formats": {},
    }
    for name, reader in (("npy", read_npy), ("blosc2", read_b2)):
        for pos in positions[:5]:  # warm the page cache and imports alike for both
            reader(*pos)
        times = []
        for pos in positions:
            start = time.perf_counter()
            a, b = reader(*pos)
            times.append(time.perf_counter() - start)
        check = reader(*positions[0])
        result["formats"][name] = {
            "write_s_per_case": write[name] / n,
            "disk_mb": _folder_bytes(npy_dir if name == "npy" else b2_dir, (".npy", ".b2nd")) / 1e6,
            "read_ms_median": float(np.median(times) * 1e3),
            "read_ms_p90": float(np.percentile(times, 90) * 1e3),
            "checksum": float(check[0].sum()),
        }
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:7])
