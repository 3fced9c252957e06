"""The usage examples in fusion_diffusers' docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["blocks", "config", "families", "hooks", "modulators", "pipelines", "precompute", "slots", "support", "verify"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"fusion_diffusers.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_support_table_classifies_supported_and_refused():
    from fusion_diffusers.support import support_markdown

    rows = [
        {"class": "DiTTransformer2DModel", "status": "supported", "reason": "family `dit`", "params_B": 0.75,
         "share": 0.301},
        {"class": "SanaTransformer2DModel", "status": "refused", "reason": "no proven family", "params_B": 1.6,
         "share": 0.019},
    ]
    text = support_markdown(rows)
    assert "| `DiTTransformer2DModel` | supported | 30.1 % |" in text
    assert "| `SanaTransformer2DModel` | refused | 1.9 % |" in text
