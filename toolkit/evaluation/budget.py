"""What the report says about the training behind its numbers: epochs x iterations per fold,
and whether the validation predictions used test-time mirroring.

Each fold's validation ``summary.json`` records its budget (written by the training's final
validation); a configuration whose folds differ lists every variant. The method's budget is
1000 epochs x 250 iterations with mirroring: a smaller one is said, so that a quick run's
Dice is not read as the method's.
"""

from __future__ import annotations

from toolkit.errors import ToolkitError
from toolkit.io.json_files import read_json
from toolkit.workspace import DatasetPaths

METHOD_EPOCHS, METHOD_ITERATIONS = 1000, 250


def describe_budget(config: str, budgets: list[dict]) -> str:
    """One line for a configuration from its folds' recorded budgets (pure)."""
    if not budgets:
        return f"{config}: budget not recorded (trained before toolkit recorded it)"
    variants = []
    for budget in budgets:
        epochs, iterations = budget.get("epochs"), budget.get("iterations_per_epoch")
        text = f"{epochs} x {iterations} iterations"
        if epochs == METHOD_EPOCHS and iterations == METHOD_ITERATIONS:
            text += " (the method's)"
        text += (
            ", validation with test-time mirroring"
            if budget.get("mirroring", True)
            else ", validation **without** test-time mirroring"
        )
        if budget.get("precision"):
            text += f", {budget['precision']}"
        if text not in variants:
            variants.append(text)
    return f"{config}: " + "; ".join(variants) + " per fold"


def fold_budgets(paths: DatasetPaths, config: str, folds: list[int]) -> list[dict]:
    """The budgets recorded in the folds' validation summaries (unreadable ones left out)."""
    budgets = []
    for fold in folds:
        try:
            summary = read_json(paths.validation_summary(config, fold), what="validation summary")
        except ToolkitError:
            continue
        if isinstance(summary.get("training"), dict):
            budgets.append(summary["training"])
    return budgets


def budget_lines(paths: DatasetPaths, configs: list[str], folds: list[int]) -> list[str]:
    """The report's training lines, one per configuration."""
    return [f"- Training: {describe_budget(c, fold_budgets(paths, c, folds))}." for c in configs]
