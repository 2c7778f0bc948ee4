"""The planner's options: budgets, limits, presets and which planners run (their defaults are the method's)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from toolkit.errors import ToolkitError
from toolkit.planning.memory import MemoryModelName
from toolkit.planning.planners import get_planner, parse_planners

PresetName = Literal["default", "cpu"]


@dataclass(frozen=True)
class PlannerOptions:
    """Budgets and limits of the planner. The defaults are the method's.

    ``planners``: which planners plan (``planners.py``), each into its own configurations of
    the one ``plans.json``. ``gpu_memory_gb``: the budget of every planner; ``None`` gives
    each its own (8 GB default and ResEnc M, 24 GB ResEnc L, 40 GB ResEnc XL).
    """

    preset: str = "default"
    gpu_memory_gb: float | None = None
    memory_model: MemoryModelName = "reference"
    features_base: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    max_patch_voxels_3d: int | None = None  # extra limit on top of the memory budget
    max_patch_voxels_2d: int | None = None
    max_batch_size_3d: int | None = None
    max_batch_size_2d: int | None = None
    min_batch_size: int = 2
    planners: tuple[str, ...] = ("default",)

    def memory_gb(self, planner: str) -> float:
        """The budget ``planner`` plans for: the option, else the planner's own."""
        return (
            self.gpu_memory_gb
            if self.gpu_memory_gb is not None
            else get_planner(planner).reference_gb
        )

    def check(self) -> PlannerOptions:
        def positive(name: str, value, allow_none: bool = True) -> None:
            if value is None and allow_none:
                return
            if value is None or value <= 0:
                raise ToolkitError(
                    f"planner option `{name}` must be a positive number, not {value!r}"
                )

        positive("gpu_memory_gb", self.gpu_memory_gb)
        if parse_planners(self.planners) != tuple(self.planners):
            raise ToolkitError(f"planners {list(self.planners)} are repeated or empty")
        positive("features_base", self.features_base, allow_none=False)
        positive("max_features_3d", self.max_features_3d, allow_none=False)
        positive("max_features_2d", self.max_features_2d, allow_none=False)
        for name in (
            "max_patch_voxels_3d",
            "max_patch_voxels_2d",
            "max_batch_size_3d",
            "max_batch_size_2d",
        ):
            positive(name, getattr(self, name))
        positive("min_batch_size", self.min_batch_size, allow_none=False)
        if self.memory_model not in ("reference", "calibrated"):
            raise ToolkitError(
                f"memory model must be 'reference' or 'calibrated', not {self.memory_model!r}"
            )
        for dims in (2, 3):
            cap = self.max_batch_size(dims)
            if cap is not None and cap < self.min_batch_size:
                raise ToolkitError(
                    f"max batch size {cap} is below the minimum batch size {self.min_batch_size}"
                )
        return self

    def max_features(self, dims: int) -> int:
        return self.max_features_3d if dims == 3 else self.max_features_2d

    def max_patch_voxels(self, dims: int) -> int | None:
        return self.max_patch_voxels_3d if dims == 3 else self.max_patch_voxels_2d

    def max_batch_size(self, dims: int) -> int | None:
        return self.max_batch_size_3d if dims == 3 else self.max_batch_size_2d


PRESETS: dict[str, PlannerOptions] = {
    "default": PlannerOptions(),
    # a plan a CPU trains in minutes: narrow network, small patches and batches
    "cpu": PlannerOptions(
        preset="cpu",
        features_base=16,
        max_features_3d=128,
        max_features_2d=128,
        max_patch_voxels_3d=40_000,
        max_patch_voxels_2d=96 * 96,
        max_batch_size_3d=2,
        max_batch_size_2d=12,
    ),
}


def preset(name: str, **overrides) -> PlannerOptions:
    """A named preset with explicit options on top (``None`` overrides are ignored)."""
    if name not in PRESETS:
        raise ToolkitError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "planners" in changes:
        changes["planners"] = parse_planners(changes["planners"])
    return replace(PRESETS[name], **changes).check()
