"""The CUDA kernels' launches (issue 20's review findings), in Numba's CUDA simulator or on a
GPU: rows too long for grid y get longer chunks, empty arrays launch nothing, outputs are
filled whatever the input's layout, and the kernels agree with the CPU's at the hardware's
block sizes on both sides of each boundary."""

import math

import numpy as np
import pytest
from numba import config
from numba import cuda as numba_cuda
from tinynorm.kernels import cpu
from tinynorm.kernels import cuda as gpu

pytestmark = [
    pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel"),
    pytest.mark.skipif(
        not (config.ENABLE_CUDASIM or numba_cuda.is_available()),
        reason="no CUDA GPU and Numba's CUDA simulator is off",
    ),
]
NO_TABLE = np.empty((0, 0))


def inputs(rng, shape, dtype=np.float64):
    x = rng.standard_normal(shape).astype(dtype) + 1.5
    dy = rng.standard_normal(shape).astype(dtype)
    rows = [rng.standard_normal(shape[:2]).astype(dtype) for _ in range(3)]
    coefficients = [rng.standard_normal(shape[:2]) for _ in range(3)]  # float64, as in combine
    return x, dy, rows, coefficients


def check_all_four(rng, shape, chunk):
    """row_moments, row_grad_sums, normalize and combine on the CUDA kernels against the CPU's."""
    x, dy, (center, scale, shift), (alpha, beta, delta) = inputs(rng, shape)
    for actual, expected in zip(gpu.row_moments(x, chunk), cpu.row_moments(x)):
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-9)
    sums = gpu.row_grad_sums(dy, x, center, None, chunk)
    for actual, expected in zip(sums, cpu.row_grad_sums(dy, x, center, NO_TABLE)):
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-9)
    y = gpu.normalize(x, center, scale, shift)
    np.testing.assert_allclose(y, cpu.normalize(x, center, scale, shift, NO_TABLE, NO_TABLE))
    dx = gpu.combine(dy, x, center, alpha, beta, delta)
    expected = cpu.combine(dy, x, center, alpha, beta, delta, NO_TABLE, np.empty_like(x))
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("S", [gpu.MAX_GRID_Y * gpu.CHUNK, gpu.MAX_GRID_Y * gpu.CHUNK + 1, 10**10])
def test_chunks_of_a_long_row_fit_on_grid_y(S):
    chunk, chunks = gpu._chunking(S, gpu.CHUNK)
    assert chunks <= gpu.MAX_GRID_Y and chunk % gpu.THREADS == 0
    assert chunk * (chunks - 1) < S <= chunk * chunks


def test_a_small_grid_limit_grows_chunks_and_loops_spans(rng, monkeypatch):
    """The same code paths as a row of billions of values, at a size the simulator runs:
    grid y limited to 3 blocks, rows of 1000 values."""
    monkeypatch.setattr(gpu, "MAX_GRID_Y", 3)
    grids = record_grids(monkeypatch)
    check_all_four(rng, (1, 2, 1000), chunk=64)
    assert grids and max(grid[-1] for grid in grids) <= 3


def record_grids(monkeypatch) -> list:
    """The grid of every kernel configured from now on (kernel[grid, block])."""
    grids = []
    kernel_type = type(gpu._normalize)
    configure = kernel_type.__getitem__

    def recording(kernel, launch):
        grid = launch[0] if isinstance(launch[0], tuple) else (launch[0],)
        grids.append(grid)
        return configure(kernel, launch)

    monkeypatch.setattr(kernel_type, "__getitem__", recording)
    return grids


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)], ids=str)
def test_empty_arrays_launch_nothing(rng, monkeypatch, shape):
    grids = record_grids(monkeypatch)
    x, dy, (center, scale, shift), (alpha, beta, delta) = inputs(rng, shape)
    mean, m2 = gpu.row_moments(x)
    ref_mean, ref_m2 = cpu.row_moments(x)
    np.testing.assert_array_equal(mean, ref_mean)  # S = 0: NaN means, as on the CPU
    np.testing.assert_array_equal(m2, ref_m2)
    for actual in gpu.row_grad_sums(dy, x, center):
        assert actual.shape == shape[:2] and not actual.any()
    assert gpu.normalize(x, center, scale, shift).shape == shape
    assert gpu.combine(dy, x, center, alpha, beta, delta).shape == shape
    assert gpu.column_grad_sums(dy, x, center, scale)[0].shape == shape[1:]
    assert all(0 not in grid for grid in grids), grids


def test_outputs_are_filled_for_a_non_contiguous_input(rng):
    """An input with permuted axes: `empty_like` would copy its layout, and writing through
    the (rows, S) reshape of such an output writes into a copy."""
    x, dy, (center, scale, shift), (alpha, beta, delta) = inputs(rng, (3, 2, 5))
    x_strided, dy_strided = x.transpose(1, 0, 2), dy.transpose(1, 0, 2)  # (2, 3, 5)
    center, scale, shift, alpha, beta, delta = (
        a.T for a in (center, scale, shift, alpha, beta, delta)
    )
    x_c, dy_c = np.ascontiguousarray(x_strided), np.ascontiguousarray(dy_strided)
    center, scale, shift = (np.ascontiguousarray(a) for a in (center, scale, shift))
    alpha, beta, delta = (np.ascontiguousarray(a) for a in (alpha, beta, delta))
    y = gpu.normalize(x_strided, center, scale, shift)
    np.testing.assert_allclose(y, cpu.normalize(x_c, center, scale, shift, NO_TABLE, NO_TABLE))
    dx = gpu.combine(dy_strided, x_strided, center, alpha, beta, delta)
    expected = cpu.combine(dy_c, x_c, center, alpha, beta, delta, NO_TABLE, np.empty_like(x_c))
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


HARDWARE = {"THREADS": 128, "CHUNK": 1024}  # what a GPU runs; the simulator defaults to 16/128


@pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="block sizes are compiled in on a GPU")
@pytest.mark.parametrize("S", [1, 127, 128, 129, 1023, 1024, 1025])
def test_the_hardware_block_sizes_on_both_sides_of_each_boundary(rng, monkeypatch, S):
    for name, value in HARDWARE.items():
        monkeypatch.setattr(gpu, name, value)
    grids = record_grids(monkeypatch)
    check_all_four(rng, (2, 1, S), chunk=HARDWARE["CHUNK"])
    chunks = math.ceil(S / HARDWARE["CHUNK"])
    spans = math.ceil(S / HARDWARE["THREADS"])
    assert grids == [(2, chunks), (2, chunks), (2, spans), (2, spans)]
