"""Engine plumbing that needs no engine: choice of engine, memory sizes, the podman state
folder, peak memory from a cgroup tree."""

import pytest

from toolkit.container import engine as engine_module
from toolkit.container import podman
from toolkit.container.engine import resolve_engine
from toolkit.container.memory import CgroupPeak, parse_memory
from toolkit.container.podman import PodmanService
from toolkit.errors import ToolkitError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("8g", 8 * 1024**3),
        ("512m", 512 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("4096", 4096),
        ("2gb", 2 * 1024**3),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


def test_parse_memory_names_the_value():
    with pytest.raises(ToolkitError, match="'lots'"):
        parse_memory("lots")


def test_engine_choice(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nowhere.sock")
    assert resolve_engine("auto") == "docker"
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setattr(
        engine_module, "DOCKER_SOCKET", engine_module.Path("/nonexistent/docker.sock")
    )
    monkeypatch.setattr(podman, "find_tool", lambda name: None)
    with pytest.raises(ToolkitError, match="--no-build"):
        resolve_engine("auto")
    assert resolve_engine("podman") == "podman"
    with pytest.raises(ToolkitError, match="--engine must be one of"):
        resolve_engine("kubernetes")


def test_podman_service_without_podman_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(podman, "find_tool", lambda name: None)
    with pytest.raises(ToolkitError, match="apt-get install podman runc"):
        PodmanService(tmp_path / "state").start()
    assert not (tmp_path / "state" / "service.lock").exists()


def test_podman_socket_path_stays_short(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    service = PodmanService(deep)
    socket = service._socket_path()
    assert len(str(socket)) <= 100 and socket.name == "podman.sock"
    service.stop()  # removes the temporary socket folder
    assert not socket.parent.exists()
    assert PodmanService(tmp_path)._socket_path() == tmp_path.resolve() / "podman.sock"


def test_cgroup_peak_v1_reads_the_high_water_mark_and_cleans_up(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.max_usage_in_bytes").write_text("0\n")
    (tmp_path / "cpu").mkdir()
    probe = CgroupPeak(root=tmp_path)
    assert probe.version == 1 and probe.parent.startswith("/toolkit-run-")
    # the engine makes the container's cgroups below ours, in every controller
    (probe.memory_dir / "libpod-x").mkdir()
    (tmp_path / "cpu" / probe.name / "libpod-x").mkdir(parents=True)
    (probe.memory_dir / "memory.max_usage_in_bytes").write_text("123456789\n")
    assert probe.peak() == 123456789
    # in a cgroup file system a folder goes with its control files; here they are plain files
    (probe.memory_dir / "memory.max_usage_in_bytes").unlink()
    probe.remove()
    assert not (tmp_path / "memory" / probe.name).exists()
    assert not (tmp_path / "cpu" / probe.name).exists()


def test_cgroup_peak_v2_and_no_controller(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    probe = CgroupPeak(root=tmp_path)
    assert probe.version == 2 and probe.peak_file == "memory.peak"
    (probe.memory_dir / "memory.peak").write_text("42\n")
    assert probe.peak() == 42 and "memory.peak" in probe.source
    (probe.memory_dir / "memory.peak").unlink()
    probe.remove()
    assert not probe.memory_dir.exists()
    with pytest.raises(OSError):
        CgroupPeak(root=tmp_path / "nothing")


class FakeEngine:
    def __init__(self, current, after_load=None):
        self.ids = {"algo:1": current}
        self.after_load = after_load
        self.loaded = []

    def image_id(self, tag):
        return self.ids.get(tag)

    def load(self, archive):
        self.loaded.append(archive)
        self.ids["algo:1"] = self.after_load


def export_record(image_id):
    from toolkit.container.stage import ExportRecord

    return ExportRecord(
        dataset="D", tag="algo:1", base_image="b", model_mode="baked", device="cpu",
        engine="podman", built=True, configurations=["3d_fullres"], folds=[0],
        input_slugs=["x-image"], output_slug="segmentation", model_bytes=1,
        context_seconds=0.1, image_id=image_id,
    )  # fmt: skip


def test_exported_image_is_loaded_when_the_tag_moved(tmp_path):
    from toolkit.container.stage import ensure_exported_image
    from toolkit.workspace import ExportPaths

    export = ExportPaths(tmp_path)
    engine = FakeEngine("sha256:a")
    ensure_exported_image(engine, export_record("sha256:a"), export)
    assert engine.loaded == []  # the tag still names the exported image
    engine = FakeEngine("sha256:b")
    with pytest.raises(ToolkitError, match="names another image now and there is no saved archive"):
        ensure_exported_image(engine, export_record("sha256:a"), export)
    export.image_archive.write_bytes(b"archive")
    engine = FakeEngine(None, after_load="sha256:a")
    ensure_exported_image(engine, export_record("sha256:a"), export)
    assert engine.loaded == [export.image_archive]
    engine = FakeEngine("sha256:b", after_load="sha256:c")
    with pytest.raises(ToolkitError, match="not the exported sha256:a"):
        ensure_exported_image(engine, export_record("sha256:a"), export)
