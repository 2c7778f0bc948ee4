"""``toolkit plan --show``: one table per configuration, for a person to read."""

from __future__ import annotations

import math

from rich.table import Table

from toolkit.core.plans import Configuration, Plans


def _axes(values) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _stages(values: list[list[int]]) -> str:
    return " ".join("(" + ",".join(str(v) for v in stage) + ")" for stage in values)


def _network(a) -> str:
    if a.network == "residual_encoder":
        blocks = " ".join(str(b) for b in a.n_blocks_per_stage)
        return f"residual encoder U-Net, residual blocks per stage {blocks}"
    return "plain U-Net, conv blocks per stage " + " ".join(str(b) for b in a.n_conv_per_stage)


def configuration_table(plans: Plans, c: Configuration) -> Table:
    title = f"{plans.dataset_name}: {c.name}"
    if c.previous_stage:
        title += f" (after {c.previous_stage})"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    axes = "z y x"
    order = " ".join(axes.split()[a] for a in plans.transpose_forward)
    norm = ", ".join(
        f"{plans.channel_names.get(str(i), i)}: {n.scheme}"
        + (" (non-zero mask)" if n.use_nonzero_mask else "")
        for i, n in enumerate(c.normalization)
    )
    a = c.architecture
    rows = [
        ("data", f"preprocessed/{c.data_identifier}"),
        ("axis order", order),
        ("target spacing (mm)", _axes(c.target_spacing)),
        ("median shape (voxels)", _axes(c.median_shape)),
        ("patch size", f"{_axes(c.patch_size)}  ({math.prod(c.patch_size):,} voxels)"),
        ("batch size", str(c.batch_size)),
        ("network", _network(a)),
        ("stages", str(a.n_stages)),
        ("features", " ".join(str(f) for f in a.features_per_stage)),
        ("kernel sizes", _stages(a.kernel_sizes)),
        ("strides", _stages(a.strides)),
        ("normalization", norm),
        (
            "resampling",
            f"image order {c.resampling.image_order}, labels one-hot order {c.resampling.label_order}, "
            f"coarse axis order {c.resampling.coarse_axis_order} when anisotropic > {c.resampling.anisotropy_threshold:g}",
        ),
        ("batch dice", "yes" if c.batch_dice else "no"),
        (
            "deep supervision",
            _stages([[round(1 / s) for s in scale] for scale in c.deep_supervision_scales])
            + " (downsampling)",
        ),
    ]
    if c.next_stage:
        rows.append(("next stage", c.next_stage))
    for field, value in rows:
        table.add_row(field, value)
    return table


def plans_tables(plans: Plans) -> list[Table]:
    return [configuration_table(plans, c) for c in plans.configurations.values()]


def planner_summary(plans: Plans) -> str:
    p = plans.planner
    if "transferred_from" in p:
        return (
            f"plans of {p['transferred_from']}; configurations: {', '.join(plans.configurations)}"
        )
    budgets = p.get("memory_gb") or {"default": p.get("gpu_memory_gb") or 8}
    planners = ", ".join(f"{name} {gb:g} GB" for name, gb in budgets.items())
    return (
        f"preset {p.get('preset', 'default')}, memory model {p.get('memory_model', 'reference')}, "
        f"planners {planners}; configurations: {', '.join(plans.configurations)}"
    )
