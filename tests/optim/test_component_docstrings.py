"""The usage examples in the component and FusionOpt docstrings run and print what they claim."""

from __future__ import annotations

import doctest

import pytest

import fusion_train.compilation
import fusion_train.kl_shampoo
import fusion_train.mona
import fusion_train.optimizer
import fusion_train.recipes


@pytest.mark.parametrize("module", [fusion_train.mona, fusion_train.kl_shampoo])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 5
    assert result.failed == 0


@pytest.mark.parametrize("module", [fusion_train.optimizer, fusion_train.recipes, fusion_train.compilation])
def test_wiring_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
