"""Build, run and save images through the Docker SDK for Python.

The SDK talks to whatever serves the Docker Engine API: Docker itself (``DOCKER_HOST`` or
its default socket), or a private podman service that :mod:`toolkit.container.podman`
starts (``--engine podman``, or ``auto`` where no Docker engine is found).

A test run mimics the platform: no network, a memory limit, ``/input`` read-only, an empty
``/output`` writable by the image's non-root user, ``/tmp`` as scratch and the rest of the
file system read-only. Peak memory comes from the kernel: with the private podman service
the container runs under a cgroup made for it, whose high-water mark
(``memory.max_usage_in_bytes``, cgroup v1, or ``memory.peak``, cgroup v2) outlives the
container; with another engine the SDK's statistics are sampled while it runs.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from toolkit.container.base import cache_dir, ensure_base_image
from toolkit.container.memory import CgroupPeak, StatsSampler, parse_memory
from toolkit.container.podman import PodmanService, podman_unavailable_reason
from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path

ENGINES = ("auto", "docker", "podman")
PLATFORM = "linux/amd64"
DEFAULT_MEMORY = "8g"  # the platform's default
EXIT_TIMED_OUT = 124  # a job stopped at the time limit (as `timeout` reports it)
DOCKER_SOCKET = Path("/var/run/docker.sock")
GZIP_LEVEL = 1
SAVE_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    seconds: float
    size_bytes: int
    user: str
    architecture: str


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    seconds: float
    stdout: str
    stderr: str
    oom_killed: bool
    peak_memory_bytes: int | None
    memory_source: str  # how the peak was measured
    timed_out: bool = False  # stopped at the time limit

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Mounts:
    input_dir: Path
    output_dir: Path
    model_dir: Path | None = None  # the platform's /opt/ml/model (tarball mode)


class Engine:
    """A Docker SDK client plus what this toolkit needs from it."""

    def __init__(self, client, description: str, private_podman: bool = False):
        self.client = client
        self.description = description
        self.private_podman = private_podman

    # images
    def has_image(self, tag: str) -> bool:
        return self.image_id(tag) is not None

    def image_id(self, tag: str) -> str | None:
        """The id of the image ``tag`` names now, or ``None``."""
        import docker

        try:
            return str(self.client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None

    def ensure_base_image(self, image: str) -> None:
        ensure_base_image(self.client, image)

    def build(
        self,
        context: Path,
        tag: str,
        log: TextIO,
        echo: Callable[[str], None] | None = None,
        target: str | None = None,
    ) -> BuildResult:
        """Build (up to stage ``target``) with the log streamed to ``log`` and ``echo``.

        The log is written as the build goes, so a person can follow it (``tail -f``);
        an error in the stream ends the build with the last steps in the message.
        """
        start = time.perf_counter()
        image_id = ""
        lines: list[str] = []
        log_name = getattr(log, "name", None)
        try:
            stream = self.client.api.build(
                path=str(context),
                tag=tag,
                target=target,
                rm=True,
                forcerm=True,
                decode=True,
                platform=PLATFORM,
                pull=False,
            )
            for chunk in stream:
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("error") or (chunk.get("errorDetail") or {}).get(
                        "message", ""
                    )
                    log.write(f"ERROR: {message}\n")
                    log.flush()
                    raise ToolkitError(
                        f"image build failed: {message.strip()} (last steps: {' | '.join(lines[-3:])})",
                        log_name,
                    )
                if isinstance(chunk.get("aux"), dict):
                    image_id = chunk["aux"].get("ID", image_id)
                text = chunk.get("stream") or chunk.get("status") or ""
                if text:
                    log.write(text)
                    log.flush()
                    for line in text.splitlines():
                        if line.strip():
                            lines.append(line.rstrip())
                            if echo is not None:
                                echo(line.rstrip())
        except ToolkitError:
            raise
        except Exception as exc:
            log.write(f"ERROR: {exc}\n")
            log.flush()
            raise ToolkitError(f"image build failed: {_api_message(exc)}", log_name) from None
        seconds = time.perf_counter() - start
        image = self.client.images.get(tag)
        attrs = image.attrs
        return BuildResult(
            tag=tag,
            image_id=image_id or image.id,
            seconds=seconds,
            size_bytes=int(attrs.get("Size") or 0),
            user=str((attrs.get("Config") or {}).get("User") or ""),
            architecture=str(attrs.get("Architecture") or ""),
        )

    def prune_dangling_images(self) -> int:
        """Remove untagged images (older builds of a tag); only for our private storage."""
        import docker

        if not self.private_podman:
            return 0  # a user's Docker engine holds other projects' images too
        try:
            result = self.client.images.prune(filters={"dangling": True})
        except docker.errors.APIError:
            return 0
        return len((result or {}).get("ImagesDeleted") or [])

    def image_size(self, tag: str) -> int:
        return int(self.client.images.get(tag).attrs.get("Size") or 0)

    def save(self, tag: str, target: Path) -> float:
        """``docker save`` of one image, gzipped, written atomically; returns seconds.

        The engine's stream is read in a thread while this one compresses (zlib releases
        the GIL), so the two overlap; level 1 compresses about three times faster than
        gzip's default for about 12% more bytes.
        """
        start = time.perf_counter()
        image = self.client.images.get(tag)
        chunks: queue.Queue = queue.Queue(maxsize=8)
        failure: list[BaseException] = []

        def read() -> None:
            try:
                for chunk in image.save(chunk_size=SAVE_CHUNK, named=True):
                    chunks.put(chunk)
            except BaseException as exc:  # handed to the writing thread
                failure.append(exc)
            finally:
                chunks.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with atomic_path(target) as tmp:
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as out,
            ):
                while (chunk := chunks.get()) is not None:
                    out.write(chunk)
            reader.join()
            if failure:
                raise ToolkitError(f"saving {tag} failed: {_api_message(failure[0])}", target)
        return time.perf_counter() - start

    def load(self, archive: Path) -> list[str]:
        """Load a saved archive (``.tar``, ``.tar.gz``, ``.tar.xz``); returns its tags.

        Decompressed here and streamed (chunked): podman's API takes a plain tar only.
        """
        import docker

        opener = (
            gzip.open
            if archive.name.endswith((".gz", ".tgz"))
            else lzma.open
            if archive.name.endswith(".xz")
            else open
        )
        try:
            with opener(archive, "rb") as stream:
                images = self.client.images.load(iter(lambda: stream.read(SAVE_CHUNK), b""))
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise ToolkitError(f"unreadable image archive ({exc})", archive) from None
        except docker.errors.APIError as exc:
            raise ToolkitError(
                f"the engine could not load the image ({_api_message(exc)})", archive
            ) from None
        return [t for image in images for t in image.tags]

    # containers
    def run(
        self,
        image: str,
        mounts: Mounts,
        memory: str = DEFAULT_MEMORY,
        timeout: float = 3600.0,
        gpu: bool = False,
    ) -> RunResult:
        """One platform-like job: no network, memory limit, read-only input and root; with
        ``gpu`` every GPU of the machine is requested (Docker's device requests)."""
        import docker

        volumes = {
            str(mounts.input_dir.resolve()): {"bind": "/input", "mode": "ro"},
            str(mounts.output_dir.resolve()): {"bind": "/output", "mode": "rw"},
        }
        if mounts.model_dir is not None:
            volumes[str(mounts.model_dir.resolve())] = {"bind": "/opt/ml/model", "mode": "ro"}
        limit = parse_memory(memory)
        probe = None
        if self.private_podman:
            with contextlib.suppress(OSError):
                probe = CgroupPeak()
        try:
            container = self.client.containers.create(
                image,
                network_mode="none",
                mem_limit=limit,
                memswap_limit=limit,  # no swap: over the limit means killed, as on the platform
                volumes=volumes,
                tmpfs={"/tmp": "rw,mode=1777"},
                read_only=True,
                cgroup_parent=probe.parent if probe else None,
                device_requests=gpu_device_requests() if gpu else None,
                detach=True,
            )
            sampler = None
            try:
                start = time.perf_counter()
                container.start()
                if probe is None:
                    sampler = StatsSampler(container)
                timed_out = False
                try:
                    status = container.wait(timeout=timeout)
                except Exception:  # requests' timeout: stop the job as the platform would
                    timed_out = True
                    with contextlib.suppress(docker.errors.APIError):
                        container.kill()
                    status = {"StatusCode": EXIT_TIMED_OUT}
                seconds = time.perf_counter() - start
                sampled = sampler.stop() if sampler else None
                container.reload()
                state = container.attrs.get("State") or {}
                stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
                stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
            exit_code = int(status.get("StatusCode", -1))
            peak = probe.peak() if probe else sampled
            return RunResult(
                exit_code=exit_code,
                seconds=seconds,
                stdout=stdout,
                stderr=stderr,
                oom_killed=not timed_out and (bool(state.get("OOMKilled")) or exit_code == 137),
                timed_out=timed_out,
                peak_memory_bytes=peak,
                memory_source=probe.source if probe else StatsSampler.source,
            )
        except docker.errors.APIError as exc:
            raise ToolkitError(f"the engine could not run {image}: {_api_message(exc)}") from None
        finally:
            if probe is not None:
                probe.remove()

    def close(self) -> None:
        self.client.close()


def gpu_device_requests() -> list:
    """``--gpus all`` as the SDK says it (podman ignores it: GPU runs need Docker)."""
    import docker

    return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return " ".join(str(explanation or exc).split())


def docker_engine_reachable() -> bool:
    return bool(os.environ.get("DOCKER_HOST")) or DOCKER_SOCKET.exists()


def resolve_engine(engine: str) -> str:
    """``auto``: Docker when ``DOCKER_HOST`` is set or its socket exists, else podman."""
    if engine not in ENGINES:
        raise ToolkitError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    if docker_engine_reachable():
        return "docker"
    if podman_unavailable_reason() is None:
        return "podman"
    raise ToolkitError(
        "no container engine: neither a Docker engine (DOCKER_HOST or /var/run/docker.sock) nor podman "
        f"({podman_unavailable_reason()}); use --no-build to write the context and dry-run it without an engine"
    )


@contextlib.contextmanager
def connect(engine: str = "auto", state_dir: Path | None = None) -> Iterator[Engine]:
    """An :class:`Engine` for the session; a private podman service is stopped afterwards."""
    import docker

    kind = resolve_engine(engine)
    if kind == "docker":
        try:
            client = docker.from_env(timeout=600)
            client.ping()
        except Exception as exc:
            raise ToolkitError(
                f"cannot reach the Docker engine ({_api_message(exc)})",
                os.environ.get("DOCKER_HOST"),
            ) from None
        engine_obj = Engine(client, f"Docker engine {client.version().get('Version', '?')}")
        try:
            yield engine_obj
        finally:
            engine_obj.close()
        return
    state = state_dir or cache_dir() / "podman"
    with PodmanService(state) as service:
        client = docker.DockerClient(base_url=service.docker_host, timeout=600)
        engine_obj = Engine(
            client,
            f"private podman {client.version().get('Version', '?')} service ({state})",
            private_podman=True,
        )
        try:
            yield engine_obj
        finally:
            engine_obj.close()
