"""run-all on a real two-node Ray cluster: a head and a second node started by ``ray start`` as
separate processes on this machine, each with its own resource label, and ``toolkit run-all
--executor ray --ray-address`` as a separate driver. The trainings must have run on both nodes
(their stage records name the node) and the selection must equal the local executor's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pipeline_helpers import SMOKE_RUN_ALL_ARGS

from toolkit.convert.stage import convert_task
from toolkit.pipeline.records import read_record, train_stage
from toolkit.pipeline.runner import RunOptions, run_all
from toolkit.synthetic import generate_task
from toolkit.workspace import DatasetPaths

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
LABELS = ("toolkit_test_head", "toolkit_test_second")
START_SECONDS = 180
# Ray's token authentication off for this cluster, in its nodes and drivers alike: with a token
# file in ~/.ray (left by another Ray cluster), `ray start` turns it on while a driver given an
# explicit address does not send the token, and could not connect
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node listens on, chosen free, so that two nodes (and other Ray instances
    on this machine) do not collide on Ray's fixed defaults."""
    ports = []
    for option in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    ):
        ports += [option, str(_free_port())]
    return ports


def _start_node(args: list[str], label: str, log: Path, temp_dir: Path) -> subprocess.Popen:
    """``ray start --block``: the node lives as long as this process (and its group) does.
    Each node gets its own short temporary folder (Ray's socket paths must stay short)."""
    command = [
        str(RAY),
        "start",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--resources",
        json.dumps({label: 1}),
        "--temp-dir",
        str(temp_dir),
        *_node_ports(),
        *args,
    ]
    return subprocess.Popen(
        command,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=RAY_ENV,
    )


def _stop(process: subprocess.Popen) -> None:
    """End the node we started, by its process group (``ray stop`` would end every Ray
    instance of this user on the machine)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:  # workers the raylet started are in the same group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cluster_nodes(address: str) -> dict[str, dict]:
    """Node id -> resources of every live node, read by a short-lived driver."""
    code = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=RAY_ENV
    )
    if out.returncode != 0:
        raise ConnectionError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_nodes(address: str, count: int, processes: list[subprocess.Popen]) -> dict:
    deadline = time.time() + START_SECONDS
    last = "no answer yet"
    while True:
        for p in processes:
            assert p.poll() is None, f"a ray node exited early ({p.args})"
        try:
            nodes = _cluster_nodes(address)
            if len(nodes) >= count:
                return nodes
            last = f"{len(nodes)} node(s)"
        except (subprocess.SubprocessError, ConnectionError) as exc:
            last = str(exc)
        assert time.time() < deadline, f"the cluster at {address} did not get {count} nodes: {last}"
        time.sleep(2)


def _selection(paths: DatasetPaths) -> dict:
    data = json.loads(paths.selection_json.read_text())
    return {k: data[k] for k in ("candidate", "configurations", "folds", "postprocessing")}


def test_run_all_on_a_two_node_ray_cluster(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'toolkit[ray]')")
    if not RAY.is_file():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    task = generate_task("mr", tmp_path / "source", n_cases=6, seed=3, shape=(16, 32, 32), n_test=1)
    local = DatasetPaths(tmp_path / "local" / "Synth")
    convert_task(task, local, workers=1, quiet=True)
    options = RunOptions(
        preset="smoke",
        folds=(0, 1),
        epochs=1,
        iters_per_epoch=2,
        val_iters=1,
        device="cpu",
        workers=1,
        quiet=True,
    )
    run_all(local, options)

    # the workspace is shared storage: every node sees tmp_path
    clustered = DatasetPaths(tmp_path / "cluster" / "Synth")
    convert_task(task, clustered, workers=1, quiet=True)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    head = _start_node(
        [
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--ray-client-server-port",
            str(_free_port()),
        ],
        LABELS[0],
        tmp_path / "head.log",
        ray_temp / "h",
    )
    nodes = [head]
    try:
        _wait_for_nodes(address, 1, nodes)
        nodes.append(
            _start_node(["--address", address], LABELS[1], tmp_path / "second.log", ray_temp / "s")
        )
        cluster = _wait_for_nodes(address, 2, nodes)
        env = {**RAY_ENV, "TOOLKIT_WORKSPACE": str(clustered.root.parent)}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "toolkit",
                "run-all",
                "Synth",
                *SMOKE_RUN_ALL_ARGS,
                "--executor",
                "ray",
                "--ray-address",
                address,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(ray_temp, ignore_errors=True)

    label_of = {
        node_id: next(label for label in LABELS if label in resources)
        for node_id, resources in cluster.items()
    }
    ran_on = {}
    for configuration in ("2d", "3d_fullres"):
        for fold in (0, 1):
            record = read_record(clustered, train_stage(configuration, fold))
            assert record is not None, f"{configuration} fold {fold} has no training record"
            ran_on[(configuration, fold)] = label_of[record.details["ran_on"]["ray_node_id"]]
    assert set(ran_on.values()) == set(LABELS), f"trainings ran on {ran_on}"
    assert _selection(clustered) == _selection(local)
