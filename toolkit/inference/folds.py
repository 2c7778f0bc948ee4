"""Which ``fold_<f>`` folders of a model folder a prediction uses (torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from toolkit.core.constants import FOLD_ALL
from toolkit.errors import ToolkitError

FOLD_PREFIX = "fold_"


def fold_dirs(model_dir: Path, folds: Sequence[int | str] | None, file_name: str) -> list[Path]:
    """The ``fold_<f>`` folders asked for (``all``: ``fold_all``, ours or nnU-Net v2's).

    None: every numbered fold holding ``file_name``, in fold order; ``fold_all`` (trained on
    every case, nnU-Net v2's fold "all") only when no numbered fold is there, as it is another
    model rather than a member of the cross-validation ensemble.
    """
    if folds is None:
        found = sorted(
            (p for p in model_dir.glob(f"{FOLD_PREFIX}*") if (p / file_name).is_file()),
            key=_fold_order,
        )
        numbered = [p for p in found if p.name[len(FOLD_PREFIX) :].isdigit()]
        every = model_dir / f"{FOLD_PREFIX}{FOLD_ALL}"
        found = numbered or ([every] if every in found else found)
        if not found:
            raise ToolkitError(f"no fold has a {file_name}: train the model first", model_dir)
        return found
    if len(folds) == 0:
        raise ToolkitError("--folds lists no fold")
    dirs = []
    for f in folds:
        d = model_dir / f"{FOLD_PREFIX}{f}"
        if not (d / file_name).is_file():
            raise ToolkitError(f"fold {f} has no {file_name}", d)
        dirs.append(d)
    return dirs


def _fold_order(path: Path) -> tuple[float, str]:
    suffix = path.name[len(FOLD_PREFIX) :]
    return (int(suffix) if suffix.isdigit() else math.inf, suffix)
