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
    # subprocesses (the CLI in kill/resume and lock tests) run with the same thread count:
    # it is part of every training step's cache key, so their results must be comparable
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()
    torch.set_num_threads(n)
