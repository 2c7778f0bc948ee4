import sys
from pathlib import Path

import pytest

# the tiny trained-looking dataset of the container tests, and the nnU-Net v2 model folder
# of the inference tests, are this package's fixtures too
TESTS = Path(__file__).resolve().parents[1]
for folder in ("container", "inference"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))


@pytest.fixture(autouse=True)
def _on_one_thread(one_torch_thread):
    yield
