"""Budget presets of ``run-all``: the method's full budget, and small ones for CPUs."""

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
            "a useful model of a small task in well under an hour on a CPU: small plans, 3d_fullres only, fold 0 x 20 x 150 iterations, validation without mirroring",
            "cpu",
            20,
            150,
            10,
            folds=(0,),
            configs=("3d_fullres",),
            validation_mirroring=False,
        ),
        Preset(
            "demo",
            "the built-in demo task (make demo) in a few minutes on a CPU: small plans, 3d_fullres only, folds 0 and 1 x 4 x 40 iterations, validation without mirroring",
            "cpu",
            4,
            40,
            5,
            folds=(0, 1),
            configs=("3d_fullres",),
            validation_mirroring=False,
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
