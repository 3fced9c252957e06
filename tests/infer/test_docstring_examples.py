"""The usage examples in fusion_infer's docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fusion_infer.exact_keys",
    "fusion_infer.bounded_store",
    "fusion_infer.weight_watch",
    "fusion_infer.cache_core",
    "fusion_infer.timestep_embedding",
    "fusion_infer.rotary",
    "fusion_infer.modulators",
    "fusion_infer.control_head",
    "fusion_infer.head_cost",
    "fusion_infer.cache",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
