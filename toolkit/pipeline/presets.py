"""Budget presets of ``run-all``: the method's full budget, and small ones for CPUs.

``quick`` and ``demo`` are time budgets (``run-all --time-budget``, :mod:`toolkit.pipeline.budget`):
the same wall time on every machine, the iterations whatever that time buys there. Their
``epochs``, ``iters_per_epoch`` and ``folds`` are what they train when ``--epochs`` or
``--iters-per-epoch`` overrides the budget (the iteration count the budget prefers per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    plan_preset: str  # planning preset (`toolkit plan --preset`)
    epochs: int
    iters_per_epoch: int
    val_iters: int
    folds: tuple[int, ...] | None = None  # None: every fold of splits.json
    configs: tuple[str, ...] | None = None  # None: every configuration of the plan
    validation_mirroring: bool = True  # test-time mirroring in each fold's final validation
    time_budget_s: float | None = None  # seconds from run-all's start to selection.json
    export_reserve_s: float = 0.0  # kept out of the budget: the export that follows (make demo)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper",
            "the method's full budget: 1000 epochs x 250 iterations per model (GPU hours)",
            "default",
            1000,
            250,
            50,
        ),
        Preset(
            "quick",
            "the best model 30 minutes buy: small plans, 3d_fullres only, trainings and iterations decided by a 30 min time budget (fold 0 first, 150 iterations per epoch), validation without mirroring; with --epochs/--iters-per-epoch: fold 0 x 20 x 150 iterations",
            "cpu",
            20,
            150,
            10,
            folds=(0,),
            configs=("3d_fullres",),
            validation_mirroring=False,
            time_budget_s=30 * 60,
        ),
        Preset(
            "demo",
            "the built-in demo task (make demo): a 4 min 30 s time budget that leaves 30 s of it for the export, small plans, 3d_fullres only, validation without mirroring; with --epochs/--iters-per-epoch: folds 0 and 1 x 4 x 40 iterations",
            "cpu",
            4,
            40,
            5,
            folds=(0, 1),
            configs=("3d_fullres",),
            validation_mirroring=False,
            time_budget_s=4.5 * 60,
            export_reserve_s=30,
        ),
        Preset(
            "smoke",
            "a few minutes on a CPU: small plans, 2 x 4 iterations, 2d and 3d_fullres, folds 0 and 1, validation without mirroring",
            "cpu",
            2,
            4,
            2,
            folds=(0, 1),
            configs=("2d", "3d_fullres"),
            validation_mirroring=False,
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ToolkitError(f"--preset must be one of {', '.join(PRESETS)}, not {name!r}") from None
