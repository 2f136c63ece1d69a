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


@pytest.fixture
def simulate_gpu(monkeypatch):
    """A function that, from its call on, routes every kernel call to the CUDA kernels (Numba's
    simulator here, a GPU with copies where there is one) with NumPy as the array module: the
    dispatch layer, the composed GPU paths and every launch as on a GPU, all but CuPy itself.
    It returns the list of the shapes dispatched to the CUDA module, so that a test can check
    that it did not pass on the CPU kernels."""
    from tinynorm.kernels import cuda

    from tinynorm import kernels

    def route() -> list:
        launched = []
        monkeypatch.setattr(kernels, "is_cupy", lambda a: True)
        monkeypatch.setattr(kernels, "get_array_module", lambda a: np)
        monkeypatch.setattr(cuda, "get_array_module", lambda a: np)
        monkeypatch.setattr(kernels, "_impl", lambda a: launched.append(a.shape) or cuda)
        return launched

    return route
