"""The docstring examples of the training/export/checkpoint modules run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "fusion_infer.noise_schedules",
    "fusion_infer.checkpoint",
    "fusion_train.training.losses",
    "fusion_train.training.diversity",
    "fusion_train.training.loop",
    "fusion_train.training.export",
    "fusion_train.training.telemetry",
    "fusion_train.cli",
    "fusion_train.data.describe",
    "fusion_train.data.piece_cache",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

