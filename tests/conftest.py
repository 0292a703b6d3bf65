"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny and gain nothing from a second thread, while on a shared
    2-core machine an OpenMP barrier waiting for a descheduled thread makes steps up to
    100x slower. Tests that spawn torchrun workers set their own thread counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
