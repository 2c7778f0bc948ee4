"""A private podman API service, for machines without a Docker engine (and for CI).

Podman serves the Docker Engine API, so the Docker SDK drives it exactly as it drives
Docker. :class:`PodmanService` starts ``podman system service`` with its own storage root,
run root and ``containers.conf`` under one state folder, so nothing else on the machine is
touched, and stops it again (by its process id, after removing leftover containers, which
outlive the service).

The ``containers.conf`` written here is what makes podman work on kernels whose cgroups the
default runtime (crun) cannot handle: runc as the runtime, the cgroupfs manager, file-based
events, and explicit ulimits. The image build through the API ignores any isolation
setting, so RUN steps are containers under this runtime too.

One service at a time owns a state folder: a lock file makes a second ``toolkit`` process
wait until the first is done, instead of two services fighting over one storage root.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.progress import info

CONTAINERS_CONF = """\
# written by toolkit: a private podman service (see toolkit/container/podman.py)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

# a unix socket path must stay below 108 bytes
_MAX_SOCKET_PATH = 100
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


# runc and debootstrap live in sbin, which a non-login PATH may lack
SYSTEM_PATHS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    """A program on PATH or in the system folders."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_PATHS])
    return shutil.which(name, path=search)


def missing_podman_tools() -> list[str]:
    """The programs a private podman service needs that are not installed."""
    return [tool for tool in ("podman", "runc") if find_tool(tool) is None]


def podman_unavailable_reason() -> str | None:
    """Why a private podman service cannot run here, or ``None`` when it can."""
    missing = missing_podman_tools()
    if missing:
        return (
            f"{' and '.join(missing)} not installed (Debian/Ubuntu: `apt-get install podman runc`; "
            "the CI installs them with .ci/setup-podman)"
        )
    return None


@dataclass(frozen=True)
class PodmanLayout:
    """The files of one private service's state folder."""

    root: Path

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def runroot(self) -> Path:
        return self.root / "run"

    @property
    def containers_conf(self) -> Path:
        return self.root / "containers.conf"

    @property
    def log(self) -> Path:
        return self.root / "service.log"

    @property
    def lock(self) -> Path:
        return self.root / "service.lock"

    @property
    def default_socket(self) -> Path:
        return self.root / "podman.sock"


class PodmanService:
    """``podman system service`` on a private storage root; a context manager.

    ``docker_host`` is the ``unix://`` URL to give the Docker SDK
    (``docker.DockerClient(base_url=service.docker_host)``).
    """

    def __init__(self, state_dir: str | Path):
        self.layout = PodmanLayout(Path(state_dir).expanduser().resolve())
        self._process: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._socket_dir: Path | None = None
        self.socket: Path | None = None

    @property
    def docker_host(self) -> str:
        if self.socket is None:
            raise RuntimeError("the podman service is not started")
        return f"unix://{self.socket}"

    @property
    def environment(self) -> dict[str, str]:
        """Environment for podman commands that must see this service's configuration."""
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.layout.containers_conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SYSTEM_PATHS])
        return env

    def podman_command(self, *args: str) -> list[str]:
        """A ``podman`` command line on this service's storage (for the CLI, not the API)."""
        return [
            find_tool("podman") or "podman",
            "--root",
            str(self.layout.storage),
            "--runroot",
            str(self.layout.runroot),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> PodmanService:
        reason = podman_unavailable_reason()
        if reason is not None:
            raise ToolkitError(f"cannot start a podman service: {reason}")
        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            layout.containers_conf.write_text(CONTAINERS_CONF)
            self.socket = self._socket_path()
            if self.socket.exists():
                self.socket.unlink()
            self._remove_leftover_containers()
            log = open(layout.log, "ab")
            try:
                self._process = subprocess.Popen(
                    self.podman_command("system", "service", "--time=0", f"unix://{self.socket}"),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.environment,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it
                )
            finally:
                log.close()
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            self._remove_leftover_containers()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.socket is not None and self.socket.exists():
            self.socket.unlink()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        self._release_lock()

    def __enter__(self) -> PodmanService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # internals
    def _socket_path(self) -> Path:
        path = self.layout.default_socket
        if len(str(path)) <= _MAX_SOCKET_PATH:
            return path
        self._socket_dir = Path(tempfile.mkdtemp(prefix="toolkit-podman-"))
        return self._socket_dir / "podman.sock"

    def _acquire_lock(self) -> None:
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(
                f"waiting for another toolkit process using the podman storage in {self.layout.root}"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _wait_until_ready(self, timeout: float) -> None:
        import docker

        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ToolkitError(
                    f"podman system service exited with code {self._process.returncode}: {self._log_tail()}",
                    self.layout.log,
                )
            if self.socket is not None and self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.docker_host, timeout=10)
                    try:
                        client.ping()
                        return
                    finally:
                        client.close()
                except Exception as exc:  # the socket exists before the API answers
                    last_error = str(exc)
            time.sleep(0.2)
        raise ToolkitError(
            f"podman system service did not answer within {timeout:.0f} s ({last_error or 'no socket'}): {self._log_tail()}",
            self.layout.log,
        )

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.layout.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "empty log"

    def _remove_leftover_containers(self) -> None:
        if not self.layout.storage.exists():
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                self.podman_command("rm", "--all", "--force"),
                env=self.environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )


@contextlib.contextmanager
def podman_service(state_dir: str | Path) -> Iterator[PodmanService]:
    with PodmanService(state_dir) as service:
        yield service
