"""The synthetic tasks: what each is, and ``make_case``, one seeded case of a task.

A task has a folder name, case-name prefix, channels, labels, default shape and number of
cases. Case ``i`` of a seed is the same whatever the number of cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.synthetic.anatomy import (
    BRATS_CHANNELS,
    SyntheticCase,
    make_2d_case,
    make_brats_case,
    make_ct_case,
    make_mr_case,
    make_sparse_case,
)


@dataclass(frozen=True)
class TaskSpec:
    kind: str
    folder: str
    prefix: str  # case names are f"{prefix}_{i:03d}"
    modality: tuple[str, ...]
    labels: tuple[str, ...]  # names of values 0, 1, 2, ...
    shape: tuple[int, ...]  # default (z, y, x), or (y, x) for 2D
    cases: int  # default number of training cases
    description: str
    # nnU-Net v2 regions written into dataset.json (name -> values) and the value each writes
    regions: dict[str, tuple[int, ...]] | None = None
    regions_class_order: tuple[int, ...] | None = None

    @property
    def dimension(self) -> int:
        return len(self.shape)


TASKS: dict[str, TaskSpec] = {
    "mr": TaskSpec(
        kind="mr",
        folder="Task901_SynthMR",
        prefix="synthmr",
        modality=("T2", "ADC"),
        labels=("background", "edema", "core"),
        shape=(24, 64, 64),
        cases=20,
        description="Synthetic two-channel MR lesions (edema around a core), anisotropic spacing",
    ),
    "ct": TaskSpec(
        kind="ct",
        folder="Task902_SynthCT",
        prefix="synthct",
        modality=("CT",),
        labels=("background", "organ", "lesion"),
        shape=(40, 64, 64),
        cases=12,
        description="Synthetic CT (Hounsfield units): an organ holding a lesion",
    ),
    "2d": TaskSpec(
        kind="2d",
        folder="Task903_Synth2D",
        prefix="synth2d",
        modality=("MRI",),
        labels=("background", "organ", "lesion"),
        shape=(96, 96),
        cases=24,
        description="Synthetic 2D images: an organ and a lesion",
    ),
    "brats": TaskSpec(
        kind="brats",
        folder="Task904_SynthBraTS",
        prefix="synthbrats",
        modality=BRATS_CHANNELS,
        labels=("background", "edema", "non-enhancing tumour", "enhancing tumour"),
        shape=(24, 64, 64),
        cases=20,
        description="Synthetic four-channel brain tumours with nested labels, trained as "
        "BraTS's regions (whole tumour, tumour core, enhancing tumour)",
        regions={
            "whole tumour": (1, 2, 3),
            "tumour core": (2, 3),
            "enhancing tumour": (3,),
        },
        regions_class_order=(1, 2, 3),
    ),
    "sparse": TaskSpec(
        kind="sparse",
        folder="Task905_SynthSparse",
        prefix="synthsparse",
        modality=("T2", "ADC"),
        labels=("background", "edema", "core", "ignore"),
        shape=(24, 64, 64),
        cases=20,
        description="Synthetic MR lesions annotated on every fourth slice only (the rest is "
        "'ignore'); the dense labels of the test cases are in labelsTs",
    ),
}
KINDS = tuple(TASKS)

_MAKERS = {
    "mr": make_mr_case,
    "ct": make_ct_case,
    "2d": make_2d_case,
    "brats": make_brats_case,
    "sparse": make_sparse_case,
}


def make_case(
    kind: str, case_index: int, seed: int = 0, shape: Sequence[int] | None = None
) -> SyntheticCase:
    """Case ``case_index`` of task ``kind``; the same for the same ``(seed, case_index)``."""
    spec = task_spec(kind)
    shape = check_shape(spec, shape)
    rng = np.random.default_rng([seed, KINDS.index(kind), case_index])
    return _MAKERS[kind](rng, shape, case_index)


def task_spec(kind: str) -> TaskSpec:
    if kind not in TASKS:
        raise ToolkitError(f"unknown synthetic task {kind!r}; choose one of {', '.join(KINDS)}")
    return TASKS[kind]


def check_shape(spec: TaskSpec, shape: Sequence[int] | None) -> tuple[int, ...]:
    if shape is None:
        return spec.shape
    shape = tuple(int(s) for s in shape)
    minimum = (8, 24, 24)[-spec.dimension :]
    if len(shape) != spec.dimension or any(s < m for s, m in zip(shape, minimum, strict=True)):
        raise ToolkitError(
            f"shape for the {spec.kind} task must be {spec.dimension} sizes of at least {minimum}, not {shape}"
        )
    return shape
