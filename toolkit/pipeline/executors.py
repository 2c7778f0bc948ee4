"""Where trainings run: one at a time in this process, or as tasks on a Ray cluster.

Both executors run the same function (:func:`toolkit.pipeline.runner.run_training_task`) on
the same task description, so a result does not depend on where it ran. The workspace
must be on storage every Ray node sees (the task carries the dataset folder's path).
"""

from __future__ import annotations

import os

from toolkit.errors import ToolkitError
from toolkit.progress import info


class LocalExecutor:
    """One training at a time on this machine's device, in dependency order."""

    def run(self, tasks) -> None:
        from toolkit.pipeline.runner import run_training_task

        for task in _dependency_order(tasks):
            run_training_task(task)


class RayExecutor:
    """Each training a Ray task asking for one GPU (or CPUs when there is none).

    A cascade fold waits for its low-res fold: the low-res task's result is passed as an
    argument, which Ray resolves before starting the dependent task.
    """

    def __init__(self, address: str | None, device: str, cpus_per_task: int | None = None):
        try:
            import ray
        except ImportError:
            raise ToolkitError("--executor ray needs Ray: pip install 'toolkit[ray]'") from None
        self.ray = ray
        self.address = address
        self.device = device
        self.cpus_per_task = cpus_per_task

    def _init(self) -> bool:
        ray = self.ray
        if ray.is_initialized():
            return False
        kwargs = {"ignore_reinit_error": True, "log_to_driver": True, "include_dashboard": False}
        if self.address:
            kwargs["address"] = self.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray instance"
            raise ToolkitError(
                f"could not connect to {where}: {str(exc).splitlines()[0]}"
            ) from None
        return True

    def resources(self) -> dict:
        cluster = self.ray.cluster_resources()
        use_gpu = self.device != "cpu" and cluster.get("GPU", 0) >= 1
        if use_gpu:
            return {"num_gpus": 1, "num_cpus": self.cpus_per_task or 1}
        cpus = self.cpus_per_task or max(1, int(cluster.get("CPU", 1)))
        return {"num_gpus": 0, "num_cpus": cpus}

    def run(self, tasks) -> None:
        started_here = self._init()
        try:
            ray = self.ray
            resources = self.resources()
            info(f"ray: {len(tasks)} training(s), each with {resources}")
            remote = ray.remote(**resources)(_ray_train)
            refs: dict[str, object] = {}
            for task in _dependency_order(tasks):
                deps = [refs[s] for s in task.after if s in refs]
                refs[task.stage] = remote.remote(task, *deps)
            try:
                ray.get(list(refs.values()))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if hasattr(exc, "cause") else exc
                if isinstance(cause, ToolkitError):
                    raise cause from None
                raise
        finally:
            if started_here:
                self.ray.shutdown()


def _ray_train(task, *_dependencies):
    from toolkit.pipeline.runner import run_training_task

    os.environ.setdefault("TOOLKIT_QUIET", "1")
    return run_training_task(task)


def _dependency_order(tasks):
    """Tasks with their prerequisites first (stable otherwise)."""
    by_stage = {t.stage: t for t in tasks}
    ordered, seen = [], set()

    def visit(task):
        if task.stage in seen:
            return
        for stage in task.after:
            if stage in by_stage:
                visit(by_stage[stage])
        seen.add(task.stage)
        ordered.append(task)

    for task in tasks:
        visit(task)
    return ordered
