"""Where trainings (and per-case work) run: in this process, or as tasks on a Ray cluster.

Both executors run the same function (:func:`toolkit.pipeline.runner.run_training_task`) on
the same task description, so a result does not depend on where it ran. The workspace
must be on storage every Ray node sees (the task carries the dataset folder's path).
"""

from __future__ import annotations

import os

from toolkit.errors import ToolkitError
from toolkit.progress import info, progress_bar


class LocalExecutor:
    """One training at a time on this machine's device, in dependency order."""

    def run(self, tasks) -> None:
        from toolkit.pipeline.runner import run_training_task

        for task in _dependency_order(tasks):
            run_training_task(task)


class RayExecutor:
    """Trainings and per-case work as tasks on a Ray cluster.

    Each training asks for one GPU (or every CPU of a node when the cluster has no GPU); each
    per-case job of the other stages (verify, fingerprint, preprocess, evaluate,
    postprocessing) asks for one CPU, through :func:`toolkit.parallel.case_backend`. A cascade
    fold waits for its low-res folds: their tasks' results are passed as arguments, which Ray
    resolves before starting the dependent task. Use it as a context manager around the whole
    run: it connects (or starts a local instance) on entry and disconnects on exit when it
    connected.
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
        self.started_here = False
        self.depth = 0
        self.tasks: dict[str, int] = {"training": 0, "case": 0}
        self.case_tasks: dict[str, int] = {}  # per-case tasks by what they did

    def __enter__(self) -> RayExecutor:
        if self.depth == 0:
            self.started_here = self._init()
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0 and self.started_here:
            self.ray.shutdown()
            self.started_here = False

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
        """Every training as a task, dependencies respected; the first failure is raised."""
        with self:
            ray = self.ray
            resources = self.resources()
            info(f"ray: {len(tasks)} training(s), each with {resources}")
            remote = ray.remote(**resources)(_ray_train)
            refs: dict[str, object] = {}
            for task in _dependency_order(tasks):
                deps = [refs[s] for s in task.after if s in refs]
                refs[task.stage] = remote.remote(task, *deps)
            self.tasks["training"] += len(refs)
            self._get(list(refs.values()))

    def map(self, fn, items, description: str, quiet: bool) -> list:
        """``[fn(x) for x in items]``, one Ray task (one CPU) per item, in order, with progress."""
        with self:
            ray = self.ray
            remote = ray.remote(num_cpus=1)(_ray_case)
            refs = [remote.remote(fn, item) for item in items]
            self.tasks["case"] += len(refs)
            self.case_tasks[description] = self.case_tasks.get(description, 0) + len(refs)
            with progress_bar(quiet) as bar:
                progress = bar.add_task(f"{description} (ray)", total=len(refs))
                pending = list(refs)
                try:
                    while pending:
                        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                        if done:
                            self._get(done)
                            bar.advance(progress, len(done))
                except BaseException:
                    for ref in pending:
                        ray.cancel(ref)
                    raise
            return self._get(refs)

    def _get(self, refs: list) -> list:
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ToolkitError):
                raise cause from None
            raise


def _ray_case(fn, item):
    return fn(item)


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
