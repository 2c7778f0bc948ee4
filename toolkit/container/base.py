"""Base images: a Debian image made with debootstrap (no registry needed), or one to pull.

A machine without a registry (this project's CI) cannot pull ``python:3.11-slim``; Debian's
``debootstrap`` builds an equivalent minimal root filesystem (Debian bookworm, Python 3.11,
``python3-venv``) from the Debian mirror instead. The root filesystem is built once (about a
minute), trimmed of documentation and package caches, and kept as a tarball in the toolkit's
cache folder; importing it into an engine takes seconds.

The cache folder is ``$TOOLKIT_CACHE``, else ``$XDG_CACHE_HOME/toolkit``, else
``~/.cache/toolkit``. Nothing in it is needed for correctness: delete it at any time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from toolkit.container.podman import find_tool
from toolkit.errors import ToolkitError
from toolkit.io.atomic import atomic_path
from toolkit.progress import info

CACHE_ENV = "TOOLKIT_CACHE"
MIRROR_ENV = "TOOLKIT_DEBIAN_MIRROR"

# the base made with debootstrap; the tag sits inside the repository name because podman's
# import API ignores a separate tag, and `localhost/` keeps a build from asking a registry
DEBOOTSTRAP_IMAGE = "localhost/toolkit-base:bookworm"
# the base to pull where an engine can reach Docker Hub; Python must be 3.11 either way,
# because the wheelhouse is downloaded for that version
PULLED_IMAGE = "python:3.11-slim-bookworm"
BASE_PYTHON_VERSION = "3.11"
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
ROOTFS_TARBALL = f"debian-{DEBIAN_SUITE}-python3.tar"
IMPORT_CHUNK = 4 * 1024 * 1024
# removed from the root filesystem: documentation, translations, package caches and lists
TRIMMED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/cache/debconf",
)


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "toolkit"


@contextlib.contextmanager
def file_lock(path: Path, waiting_message: str) -> Iterator[None]:
    """An exclusive lock on ``path`` across processes (the cache is shared by every run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(waiting_message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def debootstrap_unavailable_reason() -> str | None:
    if find_tool("debootstrap") is None:
        return "debootstrap is not installed (Debian/Ubuntu: `apt-get install debootstrap`)"
    if os.geteuid() != 0:
        return "debootstrap needs root"
    return None


def debootstrap_command(target: Path, mirror: str) -> list[str]:
    return [
        find_tool("debootstrap") or "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(target),
        mirror,
    ]


def base_rootfs_tarball(cache: Path | None = None, mirror: str | None = None) -> Path:
    """The debootstrap root filesystem as a tarball in the cache; built when absent."""
    cache = cache or cache_dir()
    target = cache / "base" / ROOTFS_TARBALL
    with file_lock(
        cache / "base" / ".lock", f"waiting for another toolkit process building {target}"
    ):
        if target.is_file():
            return target
        reason = debootstrap_unavailable_reason()
        if reason is not None:
            raise ToolkitError(
                f"cannot build the base image {DEBOOTSTRAP_IMAGE}: {reason}; "
                f"or give --base-image an image your engine has or can pull (e.g. {PULLED_IMAGE})"
            )
        mirror = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
        info(
            f"building the base image's root filesystem with debootstrap ({DEBIAN_SUITE}, {mirror}); about a minute, once"
        )
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=target.parent) as tmp:
            rootfs = Path(tmp) / "rootfs"
            result = subprocess.run(
                debootstrap_command(rootfs, mirror), capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-5:])
                raise ToolkitError(
                    f"debootstrap failed with code {result.returncode}: {tail}", mirror
                )
            for relative in TRIMMED:
                folder = rootfs / relative
                if folder.is_dir():
                    shutil.rmtree(folder)
                    folder.mkdir()
            with atomic_path(target) as tmp_tar:
                subprocess.run(
                    ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tmp_tar), "."],
                    check=True,
                )
        return target


def image_exists(client, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def remove_image(client, image: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(image, force=True)


def ensure_base_image(
    client, image: str, cache: Path | None = None, mirror: str | None = None
) -> None:
    """Make ``image`` available to the engine: present, imported from debootstrap, or pulled."""
    import docker

    if image_exists(client, image):
        return
    if image == DEBOOTSTRAP_IMAGE:
        tarball = base_rootfs_tarball(cache, mirror)
        info(f"importing {tarball.name} as {image}")
        try:
            with open(tarball, "rb") as stream:
                # a generator: the API expects a chunked upload, which a plain file would not get
                chunks = iter(lambda: stream.read(IMPORT_CHUNK), b"")
                client.api.import_image_from_stream(
                    chunks, repository=image, changes=['CMD ["/bin/bash"]']
                )
        except docker.errors.APIError as exc:
            remove_image(client, image)  # a failed import may leave a truncated image behind
            raise ToolkitError(
                f"importing the base image failed ({exc.explanation or exc})", tarball
            ) from None
        if not image_exists(client, image):
            raise ToolkitError(f"the engine did not keep the imported base image {image}", tarball)
        return
    info(f"pulling the base image {image}")
    try:
        client.images.pull(image, platform="linux/amd64")
    except docker.errors.APIError as exc:
        raise ToolkitError(
            f"base image {image!r} is not in the engine and cannot be pulled ({exc.explanation or exc}); "
            f"--base-image {DEBOOTSTRAP_IMAGE} builds one with debootstrap instead"
        ) from None
