"""Where trainings (and per-case work) run: in this process, or as tasks on a Ray cluster.

Both executors run the same function (:func:`toolkit.pipeline.training_task.run_training_task`) on
the same task description, so a result does not depend on where it ran. The workspace
must be on storage every Ray node sees (the task carries the dataset folder's path).
"""

from __future__ import annotations

from collections.abc import Callable

from toolkit.errors import ToolkitError
from toolkit.pipeline.training_task import TrainTask, run_training_task
from toolkit.progress import info, progress_bar


class LocalExecutor:
    """One training at a time on this machine's device, in dependency order."""

    def run(self, tasks, on_done: Callable[[TrainTask], None] | None = None) -> None:
        for task in _dependency_order(tasks):
            run_training_task(task)
            if on_done is not None:
                on_done(task)


class RayExecutor:
    """Trainings and per-case work as tasks on a Ray cluster.

    Each training asks for one GPU (or every CPU of the largest node when the cluster has no
    GPU) and records the node it ran on in its stage record; each
    per-case job of the other stages (verify, fingerprint, preprocess, evaluate,
    postprocessing) asks for one CPU, through :func:`toolkit.parallel.case_backend`. A cascade
    fold waits for its low-res folds: their tasks' results are passed as arguments, which Ray
    resolves before starting the dependent task. Use it as a context manager around the whole
    run: it connects (or starts a local instance) when it first has work, and on exit
    disconnects if it was the one that connected. Per-case tasks run as many at once as the
    cluster has CPUs, or ``max_case_tasks`` (``--workers``).
    """

    def __init__(
        self,
        address: str | None,
        device: str,
        cpus_per_task: int | None = None,
        max_case_tasks: int | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise ToolkitError("--executor ray needs Ray: pip install 'toolkit[ray]'") from None
        self.ray = ray
        self.address = address
        self.device = device
        self.cpus_per_task = cpus_per_task
        # per-case tasks running at once (--workers); None: as many as the cluster has CPUs
        self.max_case_tasks = max_case_tasks
        self.started_here = False
        self.depth = 0
        self.training_tasks = 0
        self.case_tasks: dict[str, int] = {}  # per-case tasks by what they did

    @property
    def tasks(self) -> dict[str, int]:
        """Tasks submitted so far: trainings, and per-case tasks of every stage together."""
        return {"training": self.training_tasks, "case": sum(self.case_tasks.values())}

    def __enter__(self) -> RayExecutor:
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0 and self.started_here:
            self.ray.shutdown()
            self.started_here = False

    def _connect(self) -> None:
        """Connect on first use (a run with nothing left to do never starts Ray)."""
        if self.ray.is_initialized():
            return
        kwargs = {"ignore_reinit_error": True, "log_to_driver": True, "include_dashboard": False}
        if self.address:
            kwargs["address"] = self.address
        try:
            self.ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray instance"
            raise ToolkitError(
                f"could not connect to {where}: {str(exc).splitlines()[0]}"
            ) from None
        self.started_here = True

    def resources(self) -> dict:
        cluster = self.ray.cluster_resources()
        use_gpu = self.device != "cpu" and cluster.get("GPU", 0) >= 1
        if use_gpu:
            return {"num_gpus": 1, "num_cpus": self.cpus_per_task or 1}
        cpus = self.cpus_per_task or largest_node_cpus(self.ray.nodes())
        return {"num_gpus": 0, "num_cpus": cpus}

    def run(self, tasks, on_done: Callable[[TrainTask], None] | None = None) -> None:
        """Every training as a task, dependencies respected; the first failure is raised.
        ``on_done`` is called here, in the driver, as each training ends."""
        with self:
            self._connect()
            ray = self.ray
            resources = self.resources()
            info(f"ray: {len(tasks)} training(s), each with {resources}")
            remote = ray.remote(**resources)(_ray_train)
            by_ref: dict[object, TrainTask] = {}
            refs: dict[str, object] = {}
            for task in _dependency_order(tasks):
                deps = [refs[s] for s in task.after if s in refs]
                refs[task.stage] = remote.remote(task, *deps)
                by_ref[refs[task.stage]] = task
            self.training_tasks += len(refs)
            running = list(refs.values())
            while running:
                done, running = ray.wait(running, num_returns=1)
                self._get(done)
                if on_done is not None:
                    for ref in done:
                        on_done(by_ref[ref])

    def map(self, fn, items, description: str, quiet: bool) -> list:
        """``[fn(x) for x in items]``, one Ray task (one CPU) per item, in order, with progress.

        At most ``max_case_tasks`` run at once when set; the first failure cancels the rest.
        """
        with self:
            self._connect()
            ray = self.ray
            remote = ray.remote(num_cpus=1)(_ray_case)
            limit = self.max_case_tasks or len(items)
            results: list = [None] * len(items)
            index: dict = {}
            waiting = list(enumerate(items))
            running: list = []
            with progress_bar(quiet) as bar:
                progress = bar.add_task(f"{description} (ray)", total=len(items))
                try:
                    while waiting or running:
                        while waiting and len(running) < limit:
                            i, item = waiting.pop(0)
                            ref = remote.remote(fn, item)
                            index[ref] = i
                            running.append(ref)
                            self.case_tasks[description] = self.case_tasks.get(description, 0) + 1
                        done, running = ray.wait(running, num_returns=1, timeout=0.5)
                        for ref, value in zip(done, self._get(done), strict=True):
                            results[index[ref]] = value
                        bar.advance(progress, len(done))
                except BaseException:
                    for ref in running:
                        ray.cancel(ref)
                    raise
            return results

    def _get(self, refs: list) -> list:
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ToolkitError):
                raise cause from None
            raise


def largest_node_cpus(nodes: list[dict]) -> int:
    """The CPUs of the largest live node (``ray.nodes()``): what a CPU training asks for.

    Not the cluster's total: a task runs on one node, and one asking for more CPUs than any
    node has would wait forever.
    """
    cpus = [
        int(node.get("Resources", {}).get("CPU", 0)) for node in nodes if node.get("Alive", True)
    ]
    return max([1, *cpus])


def _ray_case(fn, item):
    return fn(item)


def _ray_train(task, *_dependencies):
    import ray

    return run_training_task(task, ran_on={"ray_node_id": ray.get_runtime_context().get_node_id()})


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
