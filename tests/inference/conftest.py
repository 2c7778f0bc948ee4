import pytest


# every inference test runs its networks on one torch thread (tests/conftest.py)
@pytest.fixture(autouse=True)
def _inference_on_one_thread(one_torch_thread):
    yield
