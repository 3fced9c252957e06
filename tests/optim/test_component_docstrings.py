"""The usage examples in the MONA and KL-Shampoo docstrings run and print what they claim."""

from __future__ import annotations

import doctest

import pytest

import fusion_train.kl_shampoo
import fusion_train.mona


@pytest.mark.parametrize("module", [fusion_train.mona, fusion_train.kl_shampoo])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 5
    assert result.failed == 0
