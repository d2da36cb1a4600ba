"""Test-wide settings.

torch.compile needs a C++ compiler and compiles once per input shape (tens of seconds on 2 CPU cores);
the suite runs the eager implementation everywhere except in the tests that exercise compilation
explicitly, so it stays within its time budget on CI.
"""

import os

os.environ.setdefault("SPARSEDINO_COMPILE", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
