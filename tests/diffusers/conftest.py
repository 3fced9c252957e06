"""Shared settings for the diffusers-integration tests."""

import sys
from pathlib import Path

import pytest
import torch

# pytest runs with --import-mode=importlib (pyproject), which does not put test directories on
# sys.path; the tests here import their shared helpers (diffusers_tiny_models) by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    # The tiny models' ops are far below the size where intra-op threads help; on the 2-core CI
    # machine the OpenMP wake-ups cost ~10 ms per op. Restored after each test.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
