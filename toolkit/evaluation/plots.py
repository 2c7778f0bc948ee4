"""The report's figures (matplotlib, Agg canvas: no display, no global pyplot state).

Every figure lists the candidates top to bottom in the order given (the report passes them
best first) and draws the chosen candidate in orange.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolkit.io.atomic import write_with

CHOSEN_COLOUR = "tab:orange"
OTHER_COLOUR = "tab:blue"
# matplotlib 3.10 replaced vert=False by orientation="horizontal"
_MPL = tuple(int(p) for p in re.findall(r"\d+", matplotlib.__version__)[:2])
HORIZONTAL = {"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def _height(rows: int, panels: int = 1) -> float:
    return max(2.2, 0.8 + panels * (0.45 * rows + 0.9))


def _colours(names: list[str], chosen: str | None) -> list[str]:
    return [CHOSEN_COLOUR if n == chosen else OTHER_COLOUR for n in names]


def _distribution(ax, values: list[np.ndarray], positions: list[int], colours: list[str]) -> None:
    """Violins where a distribution has spread, a tick where it is a single value."""
    for v, y, colour in zip(values, positions, colours, strict=True):
        v = v[~np.isnan(v)]
        if v.size == 0:
            continue
        if np.ptp(v) > 1e-12:
            parts = ax.violinplot([v], positions=[y], **HORIZONTAL, showextrema=False, widths=0.8)
            for body in parts["bodies"]:
                body.set_facecolor(colour)
                body.set_alpha(0.45)
        else:
            ax.plot([v[0]], [y], "|", color=colour, markersize=18)


def dice_boxplots(
    path: Path, names: list[str], dice: np.ndarray, labels: dict[int, str], chosen: str | None
) -> None:
    """Per class, one box of per-case Dice per candidate (undefined cases left out)."""
    label_items = list(labels.items())
    figure = _figure(8.0, _height(len(names), len(label_items)))
    axes = figure.subplots(len(label_items), 1, squeeze=False)[:, 0]
    positions = list(range(len(names), 0, -1))
    colours = _colours(names, chosen)
    for k, (ax, (label, label_name)) in enumerate(zip(axes, label_items, strict=True)):
        data = [d[~np.isnan(d)] for d in dice[:, :, k]]
        shown = [(d, p, c) for d, p, c in zip(data, positions, colours, strict=True) if d.size]
        if shown:
            boxes = ax.boxplot(
                [d for d, _, _ in shown],
                positions=[p for _, p, _ in shown],
                **HORIZONTAL,
                widths=0.6,
                patch_artist=True,
                showfliers=False,
                medianprops={"color": "black"},
            )
            for box, (_, _, colour) in zip(boxes["boxes"], shown, strict=True):
                box.set_facecolor(colour)
                box.set_alpha(0.35)
            rng = np.random.default_rng(0)  # fixed jitter: the same picture every time
            for d, p, c in shown:
                ax.plot(
                    d, p + rng.uniform(-0.15, 0.15, d.size), ".", color=c, markersize=3, alpha=0.7
                )
        ax.set_yticks(positions, names)
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(f"class {label} ({label_name}): Dice per case", fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("Dice")
    _save(figure, path)


def bootstrap_distributions(
    path: Path,
    names: list[str],
    samples: np.ndarray,
    points: list[float],
    intervals: list[tuple[float, float]],
    chosen: str | None,
    confidence: float,
) -> None:
    """Mean foreground Dice over the virtual validation sets: distribution, interval, estimate."""
    figure = _figure(8.0, _height(len(names)))
    ax = figure.subplots()
    positions = list(range(len(names), 0, -1))
    colours = _colours(names, chosen)
    _distribution(ax, [samples[:, i] for i in range(len(names))], positions, colours)
    for y, (low, high), point, colour in zip(positions, intervals, points, colours, strict=True):
        ax.plot([low, high], [y, y], color=colour, linewidth=3)
        ax.plot([point], [y], "o", color="black", markersize=4)
    ax.set_yticks(positions, names)
    ax.set_xlabel(
        f"mean foreground Dice ({samples.shape[0]} virtual validation sets; bar: {confidence:.0%} interval)"
    )
    ax.grid(axis="x", alpha=0.3)
    _save(figure, path)


def rank_frequencies(
    path: Path, names: list[str], frequencies: list[float], chosen: str | None
) -> None:
    figure = _figure(8.0, _height(len(names)))
    ax = figure.subplots()
    positions = list(range(len(names), 0, -1))
    ax.barh(positions, frequencies, color=_colours(names, chosen), alpha=0.8)
    for y, f in zip(positions, frequencies, strict=True):
        ax.text(min(f, 1.0) + 0.01, y, f"{f:.1%}", va="center", fontsize=9)
    ax.set_yticks(positions, names)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("fraction of virtual validation sets in which the candidate is chosen")
    ax.grid(axis="x", alpha=0.3)
    _save(figure, path)


def paired_differences(
    path: Path,
    chosen: str,
    names: list[str],
    differences: np.ndarray,
    intervals: list[tuple[float, float]],
) -> None:
    """Chosen minus each other candidate, per virtual validation set (paired)."""
    figure = _figure(8.0, _height(max(1, len(names))))
    ax = figure.subplots()
    positions = list(range(len(names), 0, -1))
    _distribution(
        ax, [differences[:, i] for i in range(len(names))], positions, [OTHER_COLOUR] * len(names)
    )
    for y, (low, high) in zip(positions, intervals, strict=True):
        ax.plot([low, high], [y, y], color=OTHER_COLOUR, linewidth=3)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(positions, names)
    ax.set_xlabel(f"mean foreground Dice of {chosen} minus the candidate (> 0: {chosen} better)")
    ax.grid(axis="x", alpha=0.3)
    _save(figure, path)
