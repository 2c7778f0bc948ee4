"""The planners: the method's default (plain U-Net) and nnU-Net v2's residual-encoder presets.

Each is data: the network family it plans, blocks per stage, the memory reference its
estimate is compared with and the budget that reference stands for, and how much of the
dataset one batch may cover. The numbers are nnU-Net v2 2.8.1's ``ExperimentPlanner`` and
``nnUNetPlannerResEnc{M,L,XL}`` ("nnU-Net Revisited", MICCAI 2024: ResEnc M about 9-11 GB,
L about 24 GB, XL about 40 GB of GPU memory).

Where they differ from the default beyond their numbers (as in the reference):

* the estimate must fit the reference as it is (``estimate <= reference``); the default
  first rescales it from the reference batch to the minimum batch of 2
  (``estimate / reference_batch * 2``), which only matters for 2D (reference batch 12);
* a batch may cover the whole dataset (the default caps it at 5% of the training voxels);
* their ``3d_lowres`` gets its own data identifier (its spacing follows its own patch);
  ``2d`` and ``3d_fullres`` share the default's preprocessed data.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.core.plans import DEFAULT_PLANNER, NetworkFamily, configuration_name
from toolkit.errors import ToolkitError

MAX_STAGES = 13  # the reference's lists of blocks per stage hold this many


@dataclass(frozen=True, kw_only=True)
class NetworkPlanner:
    name: str  # our name: default, resenc-m, resenc-l, resenc-xl
    reproduces: str  # the reference's class
    plans_name: str  # the reference's plans identifier (its model folders' middle part)
    network: NetworkFamily
    blocks_encoder: tuple[int, ...]  # per stage: conv blocks (plain) or residual blocks
    blocks_decoder: tuple[int, ...]
    reference_value_3d: int  # feature-map voxels standing for `reference_gb` at batch 2
    reference_value_2d: int  # ... at batch 12
    reference_gb: float  # the budget the reference values stand for, and the default budget
    max_dataset_covered: float  # the largest share of all training voxels one batch may see
    fit_at_min_batch: bool  # rescale the estimate from the reference batch to the minimum

    def reference_value(self, dims: int) -> int:
        return self.reference_value_3d if dims == 3 else self.reference_value_2d

    def encoder_blocks(self, n_stages: int) -> list[int]:
        return list(self.blocks_encoder[:n_stages])

    def decoder_blocks(self, n_stages: int) -> list[int]:
        return list(self.blocks_decoder[: n_stages - 1])

    def configuration_name(self, base: str) -> str:
        return configuration_name(base, self.name)

    def data_identifier(self, base: str) -> str:
        """Preprocessed data of ``2d`` and ``3d_fullres`` is the same for every planner."""
        return base if base in ("2d", "3d_fullres") else self.configuration_name(base)


_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
_RESENC_DECODER = (1,) * (MAX_STAGES - 1)


def _resenc(name: str, reproduces: str, plans_name: str, ref3d: int, ref2d: int, gb: float):
    return NetworkPlanner(
        name=name,
        reproduces=reproduces,
        plans_name=plans_name,
        network="residual_encoder",
        blocks_encoder=_RESENC_BLOCKS,
        blocks_decoder=_RESENC_DECODER,
        reference_value_3d=ref3d,
        reference_value_2d=ref2d,
        reference_gb=gb,
        max_dataset_covered=1.0,
        fit_at_min_batch=False,
    )


PLANNERS: dict[str, NetworkPlanner] = {
    p.name: p
    for p in (
        NetworkPlanner(
            name=DEFAULT_PLANNER,
            reproduces="ExperimentPlanner",
            plans_name="nnUNetPlans",
            network="plain",
            blocks_encoder=(2,) * (MAX_STAGES + 1),
            blocks_decoder=(2,) * MAX_STAGES,
            reference_value_3d=560_000_000,
            reference_value_2d=85_000_000,
            reference_gb=8.0,
            max_dataset_covered=0.05,
            fit_at_min_batch=True,
        ),
        _resenc(
            "resenc-m",
            "nnUNetPlannerResEncM",
            "nnUNetResEncUNetMPlans",
            680_000_000,
            135_000_000,
            8.0,
        ),
        _resenc(
            "resenc-l",
            "nnUNetPlannerResEncL",
            "nnUNetResEncUNetLPlans",
            2_100_000_000,
            380_000_000,
            24.0,
        ),
        _resenc(
            "resenc-xl",
            "nnUNetPlannerResEncXL",
            "nnUNetResEncUNetXLPlans",
            3_600_000_000,
            560_000_000,
            40.0,
        ),
    )
}


def get_planner(name: str) -> NetworkPlanner:
    try:
        return PLANNERS[name]
    except KeyError:
        raise ToolkitError(
            f"--planner must be one of {', '.join(PLANNERS)}, not {name!r}"
        ) from None


def parse_planners(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Planner names, checked, without repeats, in the order given (none: the default)."""
    chosen = tuple(dict.fromkeys(n.strip() for n in (names or ()) if n.strip()))
    for name in chosen:
        get_planner(name)
    return chosen or (DEFAULT_PLANNER,)
