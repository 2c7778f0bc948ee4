"""Generators of synthetic tasks in the Medical Segmentation Decathlon format (tests, demo)."""

from datasets.synthetic import (
    KINDS,
    TASKS,
    SyntheticCase,
    TaskSpec,
    generate_task,
    generate_tasks,
    make_case,
)

__all__ = [
    "KINDS",
    "TASKS",
    "SyntheticCase",
    "TaskSpec",
    "generate_task",
    "generate_tasks",
    "make_case",
]
