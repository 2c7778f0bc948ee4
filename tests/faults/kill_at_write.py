"""``python kill_at_write.py N COUNT_FILE ARGS...``: run ``toolkit ARGS`` and SIGKILL the whole
process group at its Nth atomic write, after the temporary file is written and before it is
renamed onto its target (the worst moment: a temporary left behind, the target old). ``N`` 0
kills nothing and writes how many atomic writes the run made to ``COUNT_FILE``.

A test's hook, kept out of the toolkit: it wraps ``toolkit.io.atomic._fsync``, which every
atomic write calls once on its temporary. Run it with ``--workers 1`` so that every write
happens in this process, in the same order each time.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

from toolkit.cli import main
from toolkit.io import atomic


def install(kill_at: int, count_file: Path | None) -> None:
    original = atomic._fsync
    writes = 0

    def fsync_then_maybe_die(path: Path) -> None:
        nonlocal writes
        original(path)
        writes += 1
        if writes == kill_at:
            print(f"killed writing {path}", file=sys.stderr, flush=True)
            os.killpg(os.getpgid(0), signal.SIGKILL)

    atomic._fsync = fsync_then_maybe_die
    if count_file is not None:
        atexit.register(lambda: count_file.write_text(str(writes)))


if __name__ == "__main__":
    kill_at, count_file, *args = sys.argv[1:]
    install(int(kill_at), Path(count_file) if int(kill_at) == 0 else None)
    main(args)
