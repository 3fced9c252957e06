"""The docstring examples of the training/export/checkpoint modules run and print what they claim;
fusion_infer's checkpoint reader and schedules never import fusion_train (fresh interpreter)."""

import doctest
import importlib
import subprocess
import sys

import pytest

MODULES = [
    "fusion_infer.noise_schedules",
    "fusion_infer.checkpoint",
    "fusion_train.losses",
    "fusion_train.diversity",
    "fusion_train.training",
    "fusion_train.export",
    "fusion_train.telemetry",
    "fusion_train.cli",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_fusion_infer_checkpoint_does_not_import_fusion_train():
    code = (
        "import sys, fusion_infer, fusion_infer.checkpoint, fusion_infer.noise_schedules\n"
        "bad = [m for m in sys.modules if m.startswith('fusion_train')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
