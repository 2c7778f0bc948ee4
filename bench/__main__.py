"""``python -m bench`` (``make bench``): run every benchmark script present, in order.

A script is a module ``bench/<name>.py`` that sets ``IS_BENCHMARK = True`` and defines
``main(argv) -> int``; helpers (the harness, programs run by the nnU-Net venv) are not
imported. One failing script does not stop the others; the exit code says whether all passed.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

# order matters only for reading the output; scripts not listed run after these, by name
PREFERRED = ("plan_preprocess", "storage", "calibrate_memory")
MARKER = "IS_BENCHMARK = True"


def scripts() -> list[str]:
    folder = Path(__file__).parent
    found = sorted(
        p.stem for p in folder.glob("*.py") if MARKER in p.read_text(encoding="utf-8").splitlines()
    )
    return [s for s in PREFERRED if s in found] + [s for s in found if s not in PREFERRED]


def main() -> int:
    failed = []
    for name in scripts():
        module = importlib.import_module(f"bench.{name}")
        print(f"[bench] === {name} ===", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            code = module.main([])
        except Exception as exc:  # a benchmark's failure is reported, the others still run
            print(f"[bench] {name} failed: {exc!r}", file=sys.stderr)
            code = 1
        print(
            f"[bench] {name}: exit {code} after {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        if code:
            failed.append(name)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
