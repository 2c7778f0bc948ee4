"""``toolkit import-model``'s peak memory against the size of a member (issue 24, defect 3).

Three archives of one tiny trained model (the container tests' dataset): as exported; with its
example image replaced by ``--member-mb`` MB of random bytes (stored, checksums right); and
with it replaced by as many zero bytes, deflated (a zip bomb: a few hundred KB of zip). Each
is imported by ``toolkit import-model`` under ``/usr/bin/time -v``. With ``--compare-to DIR``
the same archives are imported by the toolkit checked out in ``DIR`` too (e.g. a worktree of
an older commit), on the same machine in the same run.

Usage: python -m bench.modelzip_memory [--member-mb 256] [--compare-to DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.harness import ROOT, log, machine, markdown_table, measure, write_results

IS_BENCHMARK = True
NAME = "modelzip_memory"


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx")))


def _archives(folder: Path, member_mb: int) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests" / "container"))  # the tests' tiny trained dataset
    from container_helpers import make_dataset, write_selection

    from toolkit.modelzip.stage import ModelExportOptions, export_model

    paths = make_dataset(folder / "source", "Dataset903_Memory", folds=(0,))
    write_selection(paths, folds=(0,))
    exported = folder / "model.zip"
    export_model(paths, exported, ModelExportOptions())
    with zipfile.ZipFile(exported) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    example = next(n for n in members if n.startswith("example/imagesTr/"))
    made = {"exported": exported}
    for kind, data, compression in [
        ("large member", os.urandom(member_mb << 20), zipfile.ZIP_STORED),
        ("zip bomb", bytes(member_mb << 20), zipfile.ZIP_DEFLATED),
    ]:
        content = members | {example: data}
        manifest["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in content.items()}
        target = folder / f"{kind.replace(' ', '_')}.zip"
        with zipfile.ZipFile(target, "w", compression) as zf:
            zf.writestr("manifest.json", json.dumps(manifest))
            for name, member in content.items():
                zf.writestr(name, member)
        made[kind] = target
    return made


def _import(archive: Path, workspace: Path, source: Path, log_path: Path) -> dict:
    env = os.environ | {"PYTHONPATH": str(source), "TOOLKIT_QUIET": "1"}
    code = "import sys; from toolkit.cli import main; main(sys.argv[1:])"
    command = [sys.executable, "-c", code, "import-model", str(archive), "-w", str(workspace)]
    run = measure(command, log_path, env=env, cwd=source)  # cwd first on sys.path
    tail = Path(log_path).read_text(errors="replace").strip().splitlines()
    installed = sum(p.stat().st_size for p in workspace.rglob("*") if p.is_file())
    return {
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "wall_s": round(run.wall_s, 2),
        "exit_code": run.returncode,
        "installed_mb": round(installed / 2**20, 1),
        "last_line": tail[-1][:200] if tail else "",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.modelzip_memory")
    parser.add_argument("--member-mb", type=int, default=256)
    parser.add_argument("--compare-to", type=Path, default=None)
    args = parser.parse_args(argv)
    sources = {"this checkout": ROOT}
    if args.compare_to is not None:
        revision = subprocess.run(
            ["git", "-C", str(args.compare_to), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        sources[f"{args.compare_to} ({revision or 'unknown'})"] = args.compare_to
    with tempfile.TemporaryDirectory(prefix="modelzip-memory-") as tmp:
        folder = Path(tmp)
        archives = _archives(folder, args.member_mb)
        results = []
        for kind, archive in archives.items():
            for label, source in sources.items():
                workspace = folder / f"ws-{len(results)}"
                log(f"import-model {archive.name} with {label}")
                measured = _import(archive, workspace, source, folder / f"{len(results)}.log")
                results.append(
                    {"archive": kind, "zip_mb": round(archive.stat().st_size / 2**20, 2), "toolkit": label}
                    | measured
                )  # fmt: skip
    data = {
        "member_mb": args.member_mb,
        "results": results,
        "machine": machine() | {"cpu_flags": _cpu_flags()},
    }
    rows = [
        [r["archive"], r["zip_mb"], r["toolkit"], r["peak_rss_mb"], r["installed_mb"], r["exit_code"], r["last_line"]]
        for r in results
    ]  # fmt: skip
    headers = ["archive", "zip MB", "toolkit", "peak RSS MB", "installed MB", "exit", "last line"]
    markdown = "\n\n".join(
        [
            f"# import-model peak memory against a member of {args.member_mb} MB",
            "Written by `python -m bench.modelzip_memory`. One tiny trained model; its example "
            f"image replaced by {args.member_mb} MB of random bytes (stored) or of zeros "
            "(deflated: a zip bomb). Peak RSS of the whole `toolkit import-model` process "
            "(`/usr/bin/time -v`), torch's import included.",
            markdown_table(headers, rows),
            f"Machine: {json.dumps(data['machine'])}",
        ]
    )
    write_results(NAME, data, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
