"""The usage examples in fusion_diffusers' docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["blocks", "config", "discover", "families", "hooks", "modulators", "pipelines", "precompute",
           "provenance", "selfcheck", "slots", "support", "tiny", "verify"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"fusion_diffusers.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_support_table_classifies_exact_and_refused():
    from fusion_diffusers.support import reason_counts, support_markdown

    rows = [
        {"class": "DiTTransformer2DModel", "status": "exact", "reason": "family `dit`", "verified": "0.42.1",
         "params_B": 0.75, "share": 0.405, "share_source": "family"},
        {"class": "WanTransformer3DModel", "status": "refused", "reason": "not yet proven (trace: 2 sites)",
         "verified": "", "params_B": 14.3, "share": 0.013, "share_source": "trace"},
        {"class": "MochiTransformer3DModel", "status": "refused", "verified": "", "params_B": 10.0,
         "reason": "modulators depend on tokens (4 layers)", "share": 0.001, "share_source": "trace"},
    ]
    text = support_markdown(rows)
    assert "| `DiTTransformer2DModel` | exact | family `dit` | 0.42.1 | 40.5 % | 0.750 |" in text
    assert "| `WanTransformer3DModel` | refused | not yet proven (trace: 2 sites) |  | 1.3 % (trace) |" in text
    assert reason_counts(rows) == {"exact": 1, "modulators depend on tokens": 1, "not yet proven": 1}
    assert text.index("DiTTransformer2DModel") < text.index("MochiTransformer3DModel")


def test_support_table_in_docs_covers_every_transformer_class():
    from pathlib import Path

    from fusion_diffusers.families import FAMILIES
    from fusion_diffusers.support import _transformer_classes

    doc = (Path(__file__).resolve().parents[2] / "docs" / "diffusers_support.md").read_text()
    for cls in _transformer_classes():
        assert f"| `{cls.__name__}` |" in doc, f"{cls.__name__} missing: rerun python -m fusion_diffusers.support"
    for cls, fam in FAMILIES.items():
        assert f"| `{cls.__name__}` | exact | family `{fam.name}` |" in doc, (
            f"{cls.__name__} is registered but not listed as exact: rerun python -m fusion_diffusers.support")
