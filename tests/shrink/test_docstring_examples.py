"""The usage examples in the shrink and distillation docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fusion_infer.shrink.families",
    "fusion_infer.shrink.cost",
    "fusion_infer.shrink.calibration",
    "fusion_infer.shrink.depth",
    "fusion_infer.shrink.width",
    "fusion_train.training.distill",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
