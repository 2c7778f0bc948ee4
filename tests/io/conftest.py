"""Small synthetic tasks shared by the io tests: generated once, copied when a test changes one."""

import shutil

import pytest

from toolkit.convert.stage import convert_task
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

SMALL = {"mr": (10, 32, 32), "ct": (12, 32, 32), "2d": (32, 32)}


@pytest.fixture(scope="session")
def msd_tasks(tmp_path_factory):
    """kind -> MSD task folder (3 training, 1 test case each). Do not modify: copy first."""
    root = tmp_path_factory.mktemp("msd")
    return {
        kind: generate_task(kind, root, n_cases=3, n_test=1, shape=shape, seed=7)
        for kind, shape in SMALL.items()
    }


@pytest.fixture(scope="session")
def converted_mr(msd_tasks, tmp_path_factory):
    """The small MR task converted once. Do not modify: use ``raw_copy``."""
    paths = DatasetPaths(tmp_path_factory.mktemp("converted") / "Task901_SynthMR")
    convert_task(msd_tasks["mr"], paths, workers=1, quiet=True)
    return paths


@pytest.fixture
def raw_copy(converted_mr, tmp_path):
    """A private copy of the converted MR dataset, for tests that break it."""
    paths = DatasetPaths(tmp_path / "Task901_SynthMR")
    shutil.copytree(converted_mr.root, paths.root)
    (paths.verify_cache).unlink(missing_ok=True)
    return paths


@pytest.fixture
def msd_copy(msd_tasks, tmp_path):
    """A private copy of one MSD task folder: ``msd_copy("mr")``."""

    def copy(kind: str):
        target = tmp_path / "src" / msd_tasks[kind].name
        shutil.copytree(msd_tasks[kind], target)
        return target

    return copy
