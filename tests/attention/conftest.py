"""Fixtures for the attention tests (the suite runs eagerly: tests/conftest.py sets SPARSEDINO_COMPILE=0)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
