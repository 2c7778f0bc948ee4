"""Synthetic tasks in the Medical Segmentation Decathlon format, for tests and the demo.

Three tasks, each seeded (case ``i`` of a seed is the same whatever the number of cases) and
fast to make (numpy and SimpleITK only, no data files in the repository):

* ``mr`` -> ``Task901_SynthMR``: 3D, two channels (T2, ADC) in one 4D NIfTI as in MSD's
  BraTS/Prostate; a lesion made of an outer ``edema`` (label 1) around an inner ``core``
  (label 2), both in every case; anisotropic spacing (3.0 mm slices, 0.8 mm in-plane);
  skull-stripped style zero background, a smooth bias field, texture and noise.
* ``ct`` -> ``Task902_SynthCT``: 3D single-channel CT in Hounsfield units: air around a body
  with a fat rim, soft tissue, a vertebra, an ``organ`` (label 1) holding a ``lesion``
  (label 2); spacing that differs between cases (slices 1.5-2.5 mm, in-plane 1.1-1.5 mm),
  so every case is resampled to the planned spacing.
* ``2d`` -> ``Task903_Synth2D``: 2D images (2D NIfTI), an ``organ`` (1) and a ``lesion`` (2).
* ``rgb`` -> ``Dataset920_SynthRGB``: 2D RGB PNG files in nnU-Net v2's raw layout (one
  three-channel file per case, channels named ``rgb_to_0_1``), warm ``disc``s (1) and cold
  ``square``s (2) on textured backgrounds (:mod:`toolkit.synthetic.natural`).

Objects differ from their surroundings in intensity and texture, so a small network learns
them in minutes on a CPU. The quirks of real downloads are there on purpose: MR labels
stored as float32, macOS ``._`` junk files next to real ones, and non-identity directions
(a flip or an in-plane rotation) on some cases.

The package: :mod:`toolkit.synthetic.shapes` (blobs, fields, blur),
:mod:`toolkit.synthetic.anatomy` (the three kinds of case), :mod:`toolkit.synthetic.tasks`
(the task definitions and ``make_case``), :mod:`toolkit.synthetic.msd` (writing MSD task
folders).
"""

from toolkit.synthetic.anatomy import SyntheticCase
from toolkit.synthetic.msd import generate_task, generate_tasks, msd_dataset_json
from toolkit.synthetic.natural import generate_natural_task, make_natural_case
from toolkit.synthetic.tasks import KINDS, TASKS, TaskSpec, make_case, task_spec

__all__ = [
    "KINDS",
    "TASKS",
    "SyntheticCase",
    "TaskSpec",
    "generate_natural_task",
    "generate_task",
    "generate_tasks",
    "make_case",
    "make_natural_case",
    "msd_dataset_json",
    "task_spec",
]
