"""Fixtures for the pre-training tests: a recording stand-in model with fixed, decodable representations."""
import pytest

from esmgear_fast.data import collate
from esmgear_fast.testing import real_proteins
from pretrain_helpers import OneHotModel


@pytest.fixture
def one_hot_model():
    return OneHotModel()


@pytest.fixture(scope="module")
def proteins():
    # mixed lengths: some shorter than the crop of 100, some longer
    short = real_proteins(2, 30, 60)
    long = real_proteins(2, 140, 220)
    return short + long


@pytest.fixture
def batch(proteins):
    return collate(proteins)
