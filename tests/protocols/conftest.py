"""Fixtures the protocol tests share: the datasets, loaded once per module."""

from __future__ import annotations

import pytest

from blindtrain import data as datasets


def max_relative(a, b) -> float:
    """The largest ``|a_i − b_i| / |b_i|`` of two loss curves."""
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


@pytest.fixture(scope="module")
def synthetic():
    return datasets.load("synthetic", seed=0)
