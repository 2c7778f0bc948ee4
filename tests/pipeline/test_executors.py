"""Per-case work handed to a backend, and the Ray executor's per-case tasks."""

from __future__ import annotations

import os
import sys

import pytest

from toolkit.errors import ToolkitError
from toolkit.parallel import case_backend, map_cases


def _square(x: int) -> int:
    return x * x


def _pid(_: int) -> int:
    return os.getpid()


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ToolkitError(f"case {x}: unreadable")
    return x


class _Recording:
    def __init__(self):
        self.calls = []

    def map(self, fn, items, description, quiet):
        self.calls.append((description, list(items)))
        return [fn(x) for x in reversed(items)][::-1]


def test_map_cases_uses_the_backend_inside_the_block_only():
    backend = _Recording()
    with case_backend(backend):
        assert map_cases(_square, [1, 2, 3], workers=2, description="square") == [1, 4, 9]
        # a single item is not worth a remote task
        assert map_cases(_square, [5], workers=2, description="one") == [25]
    assert backend.calls == [("square", [1, 2, 3])]
    assert map_cases(_square, [1, 2], workers=1, description="local") == [1, 4]
    assert len(backend.calls) == 1


@pytest.mark.slow
def test_ray_executor_runs_cases_as_tasks_in_order():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'toolkit[ray]')")
    from toolkit.pipeline.executors import RayExecutor

    # Ray's workers cannot import this test module: send its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        executor = RayExecutor(None, "cpu")
        with executor, case_backend(executor):
            assert map_cases(_square, list(range(7)), 1, "square", quiet=True) == [
                x * x for x in range(7)
            ]
            pids = map_cases(_pid, list(range(4)), 1, "pid", quiet=True)
            with pytest.raises(ToolkitError, match="case 3: unreadable"):
                map_cases(_fail_on_three, list(range(6)), 1, "fail", quiet=True)
        assert os.getpid() not in pids  # ran in Ray's worker processes
        assert executor.tasks["case"] == 7 + 4 + 6
        assert ray.is_initialized()  # started by the caller: left running
    finally:
        ray.shutdown()


def _slow_pid(x: int) -> tuple[int, float, float]:
    import time

    start = time.time()
    time.sleep(0.3)
    return os.getpid(), start, time.time()


@pytest.mark.slow
def test_ray_executor_starts_ray_on_first_use_only_and_shuts_it_down():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'toolkit[ray]')")
    from toolkit.pipeline.executors import RayExecutor

    assert not ray.is_initialized()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = RayExecutor(None, "cpu", max_case_tasks=1)
    with executor, case_backend(executor):
        assert not ray.is_initialized()  # nothing to do yet: no Ray started
        spans = map_cases(_slow_pid, [0, 1, 2], 2, "slow", quiet=True)
        assert ray.is_initialized() and executor.started_here
    assert not ray.is_initialized()  # started here, so shut down here
    # --workers 1: one task at a time, each starting after the previous ended
    spans = sorted(spans, key=lambda s: s[1])
    assert all(later[1] >= earlier[2] for earlier, later in zip(spans, spans[1:], strict=False))


def test_a_cpu_training_asks_for_the_largest_live_node_not_the_cluster():
    from toolkit.pipeline.executors import largest_node_cpus

    two_nodes = [
        {"Alive": True, "Resources": {"CPU": 1.0, "head": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "second": 1.0}},
    ]
    # the cluster has 2 CPUs, but a task asking for 2 would fit on no node and wait forever
    assert largest_node_cpus(two_nodes) == 1
    assert largest_node_cpus([*two_nodes, {"Alive": False, "Resources": {"CPU": 64.0}}]) == 1
    assert largest_node_cpus([{"Alive": True, "Resources": {"CPU": 8.0}}, *two_nodes]) == 8
    assert largest_node_cpus([]) == 1
