"""Run the guidance tests single-threaded: the models are tiny, and extra threads only add
contention (several times slower) on a shared 2-core machine."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
