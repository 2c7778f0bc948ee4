import os

import pytest
import torch

# no progress bars in test output; each test gets its own workspace through tmp_path
os.environ.setdefault("TOOLKIT_QUIET", "1")
# `--precision auto` picks fp32 in every test, on every machine, subprocesses included: CPUs
# differ (on one with native bf16 auto picks bf16) and tests compare against fp32 references.
# The pick itself is tested with fake flags (test_core_rules).
os.environ["TOOLKIT_CPU_FLAGS"] = "fpu,sse2,avx2"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    root = tmp_path / "workspace"
    monkeypatch.setenv("TOOLKIT_WORKSPACE", str(root))
    return root


@pytest.fixture
def one_torch_thread():
    """One torch thread: tiny networks and many small tensor passes run faster on one, and
    the suite shares two cores between its workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (what a killed command leaves)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)
