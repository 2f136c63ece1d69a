"""Test setup: Numba's CUDA simulator when this machine has no NVIDIA GPU.

It must be switched on before Numba is first imported, hence here, at collection time. With it,
the `@cuda.jit` kernels run (slowly) in Python on any machine; on a GPU machine they run for real.
"""

import os
import shutil

import numpy as np
import pytest

if not (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded generator per test: same seed, same numbers."""
    return np.random.default_rng(1234)
