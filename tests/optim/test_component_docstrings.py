"""The usage examples in the component and FusionOpt docstrings run and print what they claim."""

from __future__ import annotations

import doctest

import pytest

import fusion_train.optim.compilation
import fusion_train.optim.kl_shampoo
import fusion_train.optim.mona
import fusion_train.optim.optimizer
import fusion_train.optim.recipes


@pytest.mark.parametrize("module", [fusion_train.optim.mona, fusion_train.optim.kl_shampoo])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 5
    assert result.failed == 0


@pytest.mark.parametrize("module", [fusion_train.optim.optimizer, fusion_train.optim.recipes, fusion_train.optim.compilation])
def test_wiring_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
