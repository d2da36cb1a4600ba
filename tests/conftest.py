"""Test-wide settings.

Every test runs torch single-threaded: the suite's models are tiny, and on a 2-core CI machine extra
intra-op threads only contend (measured 10-20x slower steps under load). Tests that exercise threading
set it themselves.

torch.compile needs a C++ compiler and compiles once per input shape (tens of seconds on 2 CPU cores);
the suite runs the eager implementation everywhere except in the tests that exercise compilation
explicitly, so it stays within its time budget on CI.
"""

import os

os.environ.setdefault("SPARSEDINO_COMPILE", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
