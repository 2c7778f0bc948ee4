"""Preprocessed-case storage: plain ``.npy`` with memory maps vs nnU-Net v2's blosc2 format.

    .venv/bin/python -m bench.storage [--cases 4] [--size 160] [--patch 96] [--reads 200]

Both formats are written and read by one interpreter (the nnU-Net venv's, which has blosc2
and nnU-Net's own loader; see ``bench/storage_reads.py``), so the comparison is fair. Reported:
write time per case, size on disk, and the median / 90th percentile time of a random patch
read (open the case as training does, copy one patch of image and labels). The page cache is
warm: the cases fit in memory, as they do for most datasets on a training machine.
Writes ``bench/results/storage.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from bench.harness import BENCH, WORK, ensure_nnunet, log, machine, markdown_table, write_results

IS_BENCHMARK = True
NAME = "storage"


def render(result: dict) -> str:
    r = result["reads"]
    rows = [
        [name, f["write_s_per_case"], f["disk_mb"], f["read_ms_median"], f["read_ms_p90"]]
        for name, f in r["formats"].items()
    ]
    npy, b2 = r["formats"]["npy"], r["formats"]["blosc2"]
    return "\n".join(
        [
            "# Preprocessed storage: npy + mmap (toolkit) vs blosc2 (nnU-Net v2)",
            "",
            f"{r['cases']} cases of {'x'.join(map(str, r['shape']))} float32 + int8 labels; "
            f"{r['reads']} random {r['patch']}^3 patch reads (image and labels), warm page cache. "
            f"Machine: {result['machine']['cpus']} CPUs, load {result['machine']['load_average']}.",
            "",
            markdown_table(
                ["format", "write s/case", "disk MB", "read ms (median)", "read ms (p90)"], rows
            ),
            "",
            f"Patch read: blosc2 / npy = {b2['read_ms_median'] / npy['read_ms_median']:.1f}x; "
            f"disk: npy / blosc2 = {npy['disk_mb'] / b2['disk_mb']:.1f}x.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=160, help="edge of the cubic cases")
    parser.add_argument("--patch", type=int, default=96, help="edge of the cubic patch read")
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args(argv)
    if args.patch >= args.size:
        parser.error("--patch must be smaller than --size")
    python = ensure_nnunet()
    folder = WORK / NAME
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "reads.json"
    log(
        f"writing {args.cases} cases of {args.size}^3 in both formats, then {args.reads} patch reads each"
    )
    cmd = [str(python), str(BENCH / "storage_reads.py"), str(folder), str(out)]
    cmd += [str(v) for v in (args.cases, args.size, args.patch, args.reads)]
    subprocess.run(cmd, check=True)
    result = {"machine": machine(), "reads": json.loads(out.read_text())}
    shutil.rmtree(folder, ignore_errors=True)
    write_results(NAME, result, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
