"""Run the training tests single-threaded: on a shared, loaded 2-core machine torch's intra-op
threads mostly wait on each other (a tiny head's step is ~5x slower with 2 threads than with 1)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
