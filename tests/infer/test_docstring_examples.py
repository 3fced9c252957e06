"""The usage examples in fusion_infer's docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fusion_infer.cache.keys",
    "fusion_infer.cache.store",
    "fusion_infer.cache.weight_watch",
    "fusion_infer.cache.core",
    "fusion_infer.models.timestep_embedding",
    "fusion_infer.models.rotary",
    "fusion_infer.models.modulators",
    "fusion_infer.models.control_head",
    "fusion_infer.models.cost",
    "fusion_infer.cache.time_conditioning",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
