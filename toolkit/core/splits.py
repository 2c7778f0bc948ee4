"""Five-fold cross-validation split: seeded, written once to ``splits.json``, then reused.

The split is the reference implementation's (scikit-learn ``KFold(5, shuffle=True,
random_state=12345)`` over the sorted case names), computed here with numpy alone, so the
same cases give the same folds as nnU-Net v2. An existing ``splits.json`` is always used as
it is: a person may edit it to define their own folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.constants import FOLD_ALL, NUM_FOLDS, SPLIT_SEED
from toolkit.errors import ToolkitError
from toolkit.io.atomic import write_json
from toolkit.io.confine import plain_name
from toolkit.io.json_files import read_json
from toolkit.workspace import DatasetPaths

KEY_TRAIN = "train"
KEY_VAL = "val"

Fold = int | str  # a fold of splits.json, or FOLD_ALL ("all": every case, no held-out one)


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {KEY_TRAIN: list(self.train), KEY_VAL: list(self.val)}


def make_splits(cases: list[str], n_folds: int = NUM_FOLDS, seed: int = SPLIT_SEED) -> list[Split]:
    """K folds over ``cases``: shuffled once with ``seed``, validation blocks consecutive.

    The first ``len(cases) % n_folds`` folds get one validation case more; within a fold both
    lists keep the sorted order of the case names.
    """
    names = sorted(cases)
    n = len(names)
    if n < n_folds:
        raise ToolkitError(
            f"{n} training case(s) cannot be split into {n_folds} folds: at least {n_folds} are needed"
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, n // n_folds, dtype=int)
    sizes[: n % n_folds] += 1
    splits = []
    start = 0
    for size in sizes:
        in_val = np.zeros(n, dtype=bool)
        in_val[order[start : start + size]] = True
        start += size
        splits.append(
            Split(
                train=[names[i] for i in np.flatnonzero(~in_val)],
                val=[names[i] for i in np.flatnonzero(in_val)],
            )
        )
    return splits


def read_splits(path: Path) -> list[Split]:
    data = read_json(path, what="splits", kind=list)
    if not data:
        raise ToolkitError('must hold a list of folds, each {"train": [...], "val": [...]}', path)
    splits = []
    for k, fold in enumerate(data):
        if (
            not isinstance(fold, dict)
            or not isinstance(fold.get(KEY_TRAIN), list)
            or not isinstance(fold.get(KEY_VAL), list)
        ):
            raise ToolkitError(f'fold {k} must be an object with lists "train" and "val"', path)
        for case in fold[KEY_TRAIN] + fold[KEY_VAL]:  # a case names files: CASE.npy, ...
            plain_name(case, what=f"fold {k}'s case", source=path)
        splits.append(Split(train=list(fold[KEY_TRAIN]), val=list(fold[KEY_VAL])))
    return splits


def load_or_create_splits(path: Path, cases: list[str]) -> list[Split]:
    """The splits in ``path``; created from ``cases`` (and written atomically) when absent."""
    path = Path(path)
    if path.is_file():
        return read_splits(path)
    splits = make_splits(cases)
    write_json(path, [s.to_json() for s in splits])
    return splits


def parse_fold(text: str | int) -> Fold:
    """``"3"`` -> ``3``; ``"all"`` -> :data:`FOLD_ALL`; anything else is a one-line error."""
    value = str(text).strip()
    if value.lower() == FOLD_ALL:
        return FOLD_ALL
    if value.isdigit():
        return int(value)
    raise ToolkitError(f"a fold is a number (0, 1, ...) or {FOLD_ALL!r}, not {value!r}")


def all_cases_split(available: list[str]) -> Split:
    """Fold ``all`` (nnU-Net v2's): every case trains, and the per-epoch pseudo-Dice is
    measured on the training cases themselves, there being no held-out case."""
    if not available:
        raise ToolkitError(f"fold {FOLD_ALL} needs at least one preprocessed case")
    cases = sorted(available)
    return Split(train=list(cases), val=list(cases))


def fold_split(splits: list[Split], fold: Fold, available: list[str], path: Path) -> Split:
    """One fold's split, checked against the preprocessed cases that exist (fold ``all``:
    :func:`all_cases_split`)."""
    if fold == FOLD_ALL:
        return all_cases_split(available)
    if not isinstance(fold, int):
        raise ToolkitError(f"a fold is a number (0, 1, ...) or {FOLD_ALL!r}, not {fold!r}")
    if not 0 <= fold < len(splits):
        raise ToolkitError(
            f"fold {fold} does not exist: the split file defines folds 0..{len(splits) - 1}", path
        )
    split = splits[fold]
    have = set(available)
    missing = [c for c in split.train + split.val if c not in have]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ToolkitError(
            f"fold {fold} names {len(missing)} case(s) that are not preprocessed ({shown}): "
            "run `toolkit preprocess` again, or delete the split file to make a new one",
            path,
        )
    if not split.train or not split.val:
        raise ToolkitError(f"fold {fold} needs at least one training and one validation case", path)
    return split


def fold_numbers(paths: DatasetPaths) -> list[int]:
    """The folds of the dataset's ``splits.json`` (a user may edit it); before training has
    written one, the method's ``NUM_FOLDS``."""
    if paths.splits_json.is_file():
        return list(range(len(read_splits(paths.splits_json))))
    return list(range(NUM_FOLDS))
