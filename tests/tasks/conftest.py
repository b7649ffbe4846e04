"""Fixtures of the task-head tests: real protein chains and their packed batch."""
import pytest

from esmgear_fast.data import collate
from esmgear_fast.testing import real_proteins


@pytest.fixture(scope="module")
def proteins():
    return real_proteins(4, 30, 70)


@pytest.fixture(scope="module")
def batch(proteins):
    return collate(proteins)
