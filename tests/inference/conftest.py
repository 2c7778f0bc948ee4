import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks run faster on one thread, and the suite shares two cores between workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
