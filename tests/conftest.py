import os

import pytest

# no progress bars in test output; each test gets its own workspace through tmp_path
os.environ.setdefault("TOOLKIT_QUIET", "1")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    root = tmp_path / "workspace"
    monkeypatch.setenv("TOOLKIT_WORKSPACE", str(root))
    return root
