"""``python -m bench.reference_venv`` (``make reference``, run by ``.ci/run``): nnU-Net v2 2.8.1
in ``bench/.venv-nnunet``, the reference the agreement tests compare with.

Made from ``bench/nnunet-requirements.txt`` by :func:`bench.harness.ensure_nnunet` when it is
absent or older than that file, else reused as it is; prints the versions, what the install
took (seconds, only when it installed) and the venv's size.
"""

from __future__ import annotations

import sys
import time

from bench.harness import NNUNET_VENV, ensure_nnunet, log, nnunet_is_current, nnunet_versions


def _size_bytes() -> int:
    return sum(
        p.stat().st_size for p in NNUNET_VENV.rglob("*") if p.is_file() and not p.is_symlink()
    )


def main(argv: list[str] | None = None) -> int:
    current = nnunet_is_current()
    start = time.perf_counter()
    python = ensure_nnunet()
    seconds = time.perf_counter() - start
    versions = ", ".join(f"{k} {v}" for k, v in nnunet_versions().items())
    took = "reused" if current else f"installed in {seconds:.0f} s"
    log(f"reference: {python} ({versions}); {took}; {_size_bytes() / 1e9:.2f} GB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
