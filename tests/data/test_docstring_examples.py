"""The docstring examples of the data modules run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "fusion_infer.controls.mel_bands",
    "fusion_infer.controls.features",
    "fusion_train.data",
    "fusion_train.data.cache",
    "fusion_train.data.controls",
    "fusion_train.data.dataset",
    "fusion_train.data.mel",
    "fusion_train.data.reference",
    "fusion_train.data.synth",
    "fusion_train.data.synthetic",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
