"""`tinynorm.kernels.inspect`: what Numba compiled for a call, read from a fresh compilation's
IR and assembly. The normalize kernel's inner loop must vectorize on any x86-64 or ARM CPU that
CI runs on (SSE2/NEON at least: 4 lanes of float32)."""

import numpy as np
import pytest

from tinynorm import kernels


def test_normalize_is_vectorized_and_parallel():
    x = np.random.default_rng(0).standard_normal((4, 6, 37)).astype(np.float32)
    (r,) = kernels.inspect("normalize", (x, x.mean(axis=2), 2.0, 0.5))
    assert r.name == "normalize" and r.parallel
    assert r.vector_width > 1 and any("x float>" in t for t in r.vector_types)
    assert r.signature.startswith("(array(float32, 3d, C)") and r.signature in r.signatures
    assert r.threads >= 1 and r.threading_layer in ("omp", "tbb", "workqueue")
    assert set(r.fastmath) == {"reassoc", "contract", "nsz"}
    text = str(r)
    assert text.startswith("normalize: parallel") and f"{r.vector_width} lanes" in text


def test_every_kernel_of_a_call_in_launch_order():
    x = np.random.default_rng(1).standard_normal((3, 4, 5))
    reports = kernels.inspect("normalize_runs_composed", (x, 2, 1e-5))
    assert [r.name for r in reports] == ["row_moments", "statistics", "normalize"]
    assert all("float64" in r.signature for r in reports)
    (serial,) = kernels.inspect("im2col", (x.reshape(3, 4, 5, 1), (3, 1), (1, 1), (1, 0)))
    assert not serial.parallel and "serial" in str(serial)


def test_cache_file_is_reported_when_the_kernel_is_cached():
    x = np.ones((2, 3, 4), np.float32)
    (r,) = kernels.inspect("row_moments", (x,))
    assert r.cache_index is not None and r.cache_index.endswith(".nbi")
    assert r.cache_hits + r.cache_misses >= 1


def test_clear_errors():
    with pytest.raises(ValueError, match=r"unknown kernel function 'nope'.*'normalize'"):
        kernels.inspect("nope", ())
    with pytest.raises(ValueError, match="launched no CPU kernel"):
        kernels.inspect("get_array_module", (np.ones(2),))
    x = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(TypeError, match="max_pool_kernels"):
        kernels.inspect("max_pool", (x, (2, 2), (1, 1), (0, 0)))
