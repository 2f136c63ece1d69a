"""The normalization kernels: CPU against plain NumPy, CUDA (a GPU or Numba's simulator) against
CPU, numerical stability, and the dispatch layer in kernels/__init__.py.

Every kernel sees x[n, c, s] and works on rows r = (n, c); see kernels/__init__.py for the
formulas. References are computed in float64 from the very values the kernel was given (float32
inputs are upcast), so a float32 kernel is only charged with its own rounding.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import config
from numba import cuda as numba_cuda
from tinynorm.kernels import cpu
from tinynorm.kernels import cuda as gpu

from tinynorm import kernels, reference

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
# elementwise outputs (stored in the data's dtype): rtol = atol
TOL = {np.float32: 2e-5, np.float64: 1e-12}
# sums (accumulated in float64 over terms rounded in the data's dtype): error / Σ|term|
SUM_TOL = {np.float32: 1e-6, np.float64: 1e-12}
# moments are float64 arithmetic on exactly upcast values, whatever the data's dtype
MOMENT_TOL = 1e-12

# N in 1..3, C = 1, S = 1, S not a multiple of any block or chunk, S ≫ a block, a real layer
CPU_SHAPES = [
    (1, 1, 1),
    (1, 1, 37),
    (3, 1, 37),
    (2, 3, 1),
    (2, 3, 37),
    (1, 2, 1000),
    (3, 2, 1000),
    (1, 1, 5000),
    (2, 1, 5000),
    (8, 16, 784),
]


@dataclass
class Case:
    """Inputs for one shape and dtype: data (N, C, S), per-row (N, C), affine tables (C, S)."""

    x: np.ndarray
    dy: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    delta: np.ndarray
    w: np.ndarray
    b: np.ndarray

    @property
    def dtype(self):
        return self.x.dtype.type

    def f64(self, *names):
        return [getattr(self, name).astype(np.float64) for name in names]

    def cpu_tables(self, elementwise: bool):
        """(w, b) as the CPU kernels take them: the tables, or (0, 0) arrays for none."""
        if elementwise:
            return self.w, self.b
        none = np.empty((0, 0), self.dtype)
        return none, none

    def cuda_tables(self, elementwise: bool):
        """(w, b) as the CUDA wrappers take them: the tables, or None."""
        return (self.w, self.b) if elementwise else (None, None)


def make_case(rng, shape, dtype, offset: float = 0.0) -> Case:
    N, C, S = shape

    def cast(a):
        return np.ascontiguousarray(a, dtype)

    def per_row(low, high, dtype=dtype):
        return np.ascontiguousarray(rng.uniform(low, high, (N, C)), dtype)

    x = cast(offset + rng.standard_normal(shape))
    # near each row's mean, as a caller would pass it, but not equal to it
    center = cast(x.astype(np.float64).mean(axis=2) + rng.uniform(-0.5, 0.5, (N, C)))
    return Case(
        x=x,
        dy=cast(rng.standard_normal(shape)),
        center=center,
        scale=per_row(0.5, 2.0),
        shift=per_row(-1.0, 1.0),
        # combine's coefficients are float64 whatever x's dtype, as the dispatch passes them
        alpha=per_row(0.5, 2.0, np.float64),
        beta=per_row(-1.0, 1.0, np.float64),
        delta=per_row(-1.0, 1.0, np.float64),
        w=cast(rng.standard_normal((C, S))),
        b=cast(rng.standard_normal((C, S))),
    )


def assert_values(actual, expected, dtype):
    """An elementwise result: x's shape and dtype, equal to `expected` up to rounding."""
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


def assert_sums(actual, terms, axis, tol, expected=None):
    """`actual` is Σ terms over `axis` (or `expected`, when given), in float64, to within
    tol·Σ|terms| — the scale of the rounding error of any order of summation."""
    if expected is None:
        expected = terms.sum(axis=axis)
    bound = tol * np.abs(terms).sum(axis=axis)
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    err = np.abs(actual - expected)
    assert np.all(err <= bound), f"error {err.max():.3g} > bound at {np.argmax(err - bound)}"


def assert_means(actual, x, expected):
    """A per-row mean in float64, to float64 rounding of the data's magnitude."""
    assert actual.dtype == np.float64
    atol = 1e-13 * (1.0 + np.abs(x).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


# plain-NumPy float64 versions of the documented formulas --------------------------------------


def ref_normalize(case: Case, elementwise: bool):
    x, center, scale, shift = case.f64("x", "center", "scale", "shift")
    w, b = case.f64("w", "b") if elementwise else (1.0, 0.0)
    return (x - center[..., None]) * scale[..., None] * w + shift[..., None] + b


def ref_row_grad_terms(case: Case, elementwise: bool):
    """The terms summed over s: dy·w and dy·w·(x - center)."""
    dy, x, center = case.f64("dy", "x", "center")
    g = dy * case.w.astype(np.float64) if elementwise else dy
    return g, g * (x - center[..., None])


def ref_combine(case: Case, elementwise: bool):
    dy, x, center, alpha, beta, delta = case.f64("dy", "x", "center", "alpha", "beta", "delta")
    g = dy * case.w.astype(np.float64) if elementwise else dy
    return alpha[..., None] * g + beta[..., None] * (x - center[..., None]) + delta[..., None]


def ref_column_grad_terms(case: Case):
    """The terms summed over n: dy and dy·(x - center)·scale."""
    dy, x, center, scale = case.f64("dy", "x", "center", "scale")
    return dy, dy * (x - center[..., None]) * scale[..., None]


# CPU kernels against NumPy ---------------------------------------------------------------------


def check_cpu_row_moments(case: Case):
    x64 = case.x.astype(np.float64)
    mean, m2 = cpu.row_moments(case.x)
    ref_mean = x64.mean(axis=2)
    assert_means(mean, x64, ref_mean)
    assert_sums(m2, (x64 - ref_mean[..., None]) ** 2, axis=2, tol=MOMENT_TOL)


def check_cpu_normalize(case: Case, elementwise: bool):
    y = cpu.normalize(case.x, case.center, case.scale, case.shift, *case.cpu_tables(elementwise))
    assert_values(y, ref_normalize(case, elementwise), case.dtype)


def check_cpu_row_grad_sums(case: Case, elementwise: bool):
    w = case.cpu_tables(elementwise)[0]
    sum_g, sum_gx = cpu.row_grad_sums(case.dy, case.x, case.center, w)
    terms_g, terms_gx = ref_row_grad_terms(case, elementwise)
    assert_sums(sum_g, terms_g, axis=2, tol=SUM_TOL[case.dtype])
    assert_sums(sum_gx, terms_gx, axis=2, tol=SUM_TOL[case.dtype])


def check_cpu_combine(case: Case, elementwise: bool):
    w = case.cpu_tables(elementwise)[0]
    rows = (case.center, case.alpha, case.beta, case.delta)
    dx = cpu.combine(case.dy, case.x, *rows, w)
    assert_values(dx, ref_combine(case, elementwise), case.dtype)


def check_cpu_column_grad_sums(case: Case):
    db, dw = cpu.column_grad_sums(case.dy, case.x, case.center, case.scale)
    terms_b, terms_w = ref_column_grad_terms(case)
    assert_sums(db, terms_b, axis=0, tol=SUM_TOL[case.dtype])
    assert_sums(dw, terms_w, axis=0, tol=SUM_TOL[case.dtype])


shape_param = pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
dtype_param = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
elementwise_param = pytest.mark.parametrize("elementwise", [False, True], ids=["rows", "tables"])


@shape_param
@dtype_param
def test_cpu_row_moments(rng, shape, dtype):
    check_cpu_row_moments(make_case(rng, shape, dtype))


@shape_param
@dtype_param
@elementwise_param
def test_cpu_normalize(rng, shape, dtype, elementwise):
    check_cpu_normalize(make_case(rng, shape, dtype), elementwise)


@shape_param
@dtype_param
@elementwise_param
def test_cpu_row_grad_sums(rng, shape, dtype, elementwise):
    check_cpu_row_grad_sums(make_case(rng, shape, dtype), elementwise)


@shape_param
@dtype_param
@elementwise_param
def test_cpu_combine(rng, shape, dtype, elementwise):
    check_cpu_combine(make_case(rng, shape, dtype), elementwise)


@shape_param
@dtype_param
def test_cpu_column_grad_sums(rng, shape, dtype):
    check_cpu_column_grad_sums(make_case(rng, shape, dtype))


def test_cpu_moments_of_a_constant_row_are_exact():
    x = np.full((2, 1, 1001), 3.7, np.float32)
    mean, m2 = cpu.row_moments(x)
    np.testing.assert_array_equal(mean, np.float64(np.float32(3.7)))
    np.testing.assert_array_equal(m2, 0.0)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 300))


@settings(max_examples=25, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    offset=st.sampled_from([0.0, -3.0, 250.0]),
    elementwise=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_cpu_kernels_match_numpy_on_random_inputs(shape, dtype, offset, elementwise, seed):
    case = make_case(np.random.default_rng(seed), shape, dtype, offset)
    check_cpu_row_moments(case)
    check_cpu_normalize(case, elementwise)
    check_cpu_row_grad_sums(case, elementwise)
    check_cpu_combine(case, elementwise)
    check_cpu_column_grad_sums(case)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 300)),
    dtype=st.sampled_from(DTYPES),
    offset=st.floats(-1e3, 1e3),
    std=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_cpu_normalized_rows_have_zero_mean_and_unit_variance(shape, dtype, offset, std, seed):
    """row_moments then normalize with (mean, 1/sqrt(var + eps)): the rows of y have mean 0 and
    variance var/(var + eps), to the data's precision relative to its offset: the rounding of
    each x (|offset|·eps) over the row's own spread (a row of 2 or 3 draws can be far narrower
    than `std`)."""
    S, eps = shape[2], 1e-5
    x = (offset + std * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    mean, m2 = cpu.row_moments(x)
    var = m2 / S
    rows = [a.astype(dtype) for a in (mean, 1 / np.sqrt(var + eps), np.zeros_like(mean))]
    none = np.empty((0, 0), dtype)
    y = cpu.normalize(x, *rows, none, none)
    y_mean, y_m2 = cpu.row_moments(y)
    tol = 10 * np.finfo(dtype).eps * (1 + abs(offset) / np.sqrt(var + eps))  # per row
    assert np.all(np.abs(y_mean) <= tol), (y_mean, tol)
    assert np.all(np.abs(y_m2 / S - var / (var + eps)) <= tol), (y_m2 / S, var, tol)


# the fused per-run kernels (IN, GN, LN) ----------------------------------------------------------

EPS = 1e-5
# (shape, k): runs of k rows that divide C, on sizes that are multiples of nothing; one long row
RUN_CASES = [((3, 6, 7), k) for k in (1, 2, 3, 6)] + [((2, 4, 1000), 2), ((2, 1, 5000), 1)]
run_case_param = pytest.mark.parametrize(("shape", "k"), RUN_CASES, ids=str)
channels_param = pytest.mark.parametrize("channels", [False, True], ids=["plain", "gamma-beta"])


@dataclass
class Runs:
    """A Case with per-channel gamma, beta (C,) or None, the tables w, b or None, and whether
    the runs are centered (c = the mean) or not (c = 0, var = ⟨x²⟩: RMSNorm, FRN)."""

    case: Case
    k: int
    gamma: np.ndarray | None
    beta: np.ndarray | None
    w: np.ndarray | None
    b: np.ndarray | None
    centered: bool = True

    @property
    def affine(self):
        return self.gamma, self.beta, self.w, self.b


def make_runs(rng, shape, k, dtype, channels: bool, elementwise: bool, centered=True) -> Runs:
    case = make_case(rng, shape, dtype, offset=1.5)
    C = shape[1]
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype) if channels else None
    beta = rng.standard_normal(C).astype(dtype) if channels else None
    w, b = (case.w, case.b) if elementwise else (None, None)
    return Runs(case, k, gamma, beta, w, b, centered)


def ref_runs(r: Runs):
    """Float64, by `tinynorm.reference`: the run statistics (c, ρ), y, and the backward's dx,
    Σ_s dy·w and Σ_s dy·w·(x - c)."""
    x, dy = r.case.f64("x", "dy")
    N, C, _ = x.shape
    G = C // r.k

    def f64(a, default):
        return default if a is None else a.astype(np.float64)

    gamma = f64(r.gamma, np.ones(C))[:, None]
    beta = f64(r.beta, np.zeros(C))[:, None]
    w, b = f64(r.w, 1.0), f64(r.b, 0.0)
    xhat, mean, rstd = reference.standardize(x.reshape(N, G, -1), 2, EPS, r.centered)
    y = xhat.reshape(x.shape) * gamma * w + beta + b
    g = (gamma * dy * w).reshape(N, G, -1)
    dx = reference.standardize_grad(g, xhat, rstd, 2, r.centered)
    mean, rstd = mean[..., 0], rstd[..., 0]
    terms_dy = dy * w
    terms_dyx = terms_dy * (x - np.repeat(mean, r.k, axis=1)[..., None])
    return y, mean, rstd, dx.reshape(x.shape), terms_dy, terms_dyx


@run_case_param
@dtype_param
@channels_param
@elementwise_param
@pytest.mark.parametrize("centered", [True, False], ids=["centered", "uncentered"])
def test_cpu_runs_match_numpy_and_the_composed_path(
    rng, shape, k, dtype, channels, elementwise, centered
):
    r = make_runs(rng, shape, k, dtype, channels, elementwise, centered)
    x, dy = r.case.x, r.case.dy
    y, mean, rstd = kernels.normalize_runs(x, k, EPS, *r.affine, centered=centered)
    ref_y, ref_mean, ref_rstd, ref_dx, terms_dy, terms_dyx = ref_runs(r)
    assert mean.shape == rstd.shape == (shape[0], shape[1] // k)
    assert_values(y, ref_y, dtype)
    assert_means(mean, x.astype(np.float64), ref_mean)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-10)
    gamma, w = r.gamma, r.w
    dx, dgamma, dbeta, sum_gx = kernels.combine_runs(dy, x, k, mean, rstd, gamma, w, centered)
    assert_values(dx, ref_dx, dtype)
    assert dgamma.dtype == dbeta.dtype == (dtype if gamma is None else gamma.dtype)
    rho = np.repeat(ref_rstd, k, axis=1)[..., None]
    assert_sums(dbeta.astype(np.float64), terms_dy, axis=(0, 2), tol=SUM_TOL[dtype])
    assert_sums(dgamma.astype(np.float64), terms_dyx * rho, axis=(0, 2), tol=SUM_TOL[dtype])
    g = 1 if gamma is None else gamma.astype(np.float64)[:, None]
    ref_gx = (g * terms_dyx).reshape(shape[0], shape[1] // k, -1)
    assert_sums(sum_gx, ref_gx, axis=2, tol=SUM_TOL[dtype])

    composed = kernels.normalize_runs_composed(x, k, EPS, *r.affine, centered)
    composed += kernels.combine_runs_composed(dy, x, k, mean, rstd, gamma, w, centered)
    for fused, other in zip((y, mean, rstd, dx, dgamma, dbeta, sum_gx), composed):
        assert fused.dtype == other.dtype
        np.testing.assert_allclose(fused, other, rtol=TOL[dtype], atol=TOL[dtype])


def test_cpu_runs_are_stable_for_a_large_offset(rng):
    """x = 10⁴ + N(0, 1) in float32: centered moments, so each run of y has mean 0 and
    variance 1 (no E[x²] - E[x]² cancellation)."""
    x = (1e4 + rng.standard_normal((2, 4, 2000))).astype(np.float32)
    y, mean, rstd = kernels.normalize_runs(x, 2, EPS)
    runs = x.astype(np.float64).reshape(2, 2, -1)
    np.testing.assert_allclose(mean, runs.mean(axis=2), rtol=1e-12)
    np.testing.assert_allclose(1 / rstd**2 - EPS, runs.var(axis=2), rtol=1e-9)
    y_runs = y.astype(np.float64).reshape(2, 2, -1)
    np.testing.assert_allclose(y_runs.mean(axis=2), 0, atol=1e-3)
    np.testing.assert_allclose(y_runs.var(axis=2), 1, atol=1e-3)


# CUDA kernels against CPU ----------------------------------------------------------------------

CUDA_USABLE = config.ENABLE_CUDASIM or numba_cuda.is_available()


# Run on a GPU, or in the simulator that conftest.py switches on when there is none. NumPy
# inputs on a real GPU are copied to and from the device, with a warning.
CUDA_MARKS = [
    pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel"),
    pytest.mark.skipif(
        not CUDA_USABLE,
        reason="no CUDA GPU and Numba's CUDA simulator is off (NUMBA_ENABLE_CUDASIM unset)",
    ),
]


def cuda_test(test):
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


# The simulator runs every thread in Python, so these stay small, except one row ≫ a block.
CUDA_CASES = [
    *[
        pytest.param(shape, dtype, id=f"{shape}-{name}")
        for shape in [(1, 1, 1), (3, 1, 37), (2, 3, 1), (2, 3, 37), (1, 2, 1000)]
        for dtype, name in zip(DTYPES, DTYPE_IDS)
    ],
    pytest.param((1, 1, 5000), np.float32, id="(1, 1, 5000)-float32"),
]
cuda_case_param = pytest.mark.parametrize(("shape", "dtype"), CUDA_CASES)

# (shape, chunk): several blocks per row with a partial last chunk; a chunk smaller than a
# block (idle threads); a chunk that divides S exactly
CHUNKED = [((1, 2, 200), 64), ((1, 1, 50), gpu.THREADS // 2), ((2, 1, 128), 64)]
chunked_param = pytest.mark.parametrize(("shape", "chunk"), CHUNKED, ids=str)


def check_cuda_row_moments(case: Case, **chunk):
    mean, m2 = gpu.row_moments(case.x, **chunk)
    ref_mean, ref_m2 = cpu.row_moments(case.x)
    x64 = case.x.astype(np.float64)
    assert_means(mean, x64, ref_mean)
    terms = (x64 - ref_mean[..., None]) ** 2
    assert_sums(m2, terms, axis=2, tol=2 * MOMENT_TOL, expected=ref_m2)


def check_cuda_row_grad_sums(case: Case, elementwise: bool, **chunk):
    w = case.cuda_tables(elementwise)[0]
    sums = gpu.row_grad_sums(case.dy, case.x, case.center, w, **chunk)
    ref = cpu.row_grad_sums(case.dy, case.x, case.center, case.cpu_tables(elementwise)[0])
    for actual, expected, terms in zip(sums, ref, ref_row_grad_terms(case, elementwise)):
        assert_sums(actual, terms, axis=2, tol=2 * SUM_TOL[case.dtype], expected=expected)


@cuda_test
@cuda_case_param
def test_cuda_row_moments_match_cpu(rng, shape, dtype):
    check_cuda_row_moments(make_case(rng, shape, dtype))


@cuda_test
@cuda_case_param
@elementwise_param
def test_cuda_normalize_matches_cpu(rng, shape, dtype, elementwise):
    case = make_case(rng, shape, dtype)
    rows = (case.center, case.scale, case.shift)
    y = gpu.normalize(case.x, *rows, *case.cuda_tables(elementwise))
    assert_values(y, cpu.normalize(case.x, *rows, *case.cpu_tables(elementwise)), dtype)


@cuda_test
@cuda_case_param
@elementwise_param
def test_cuda_row_grad_sums_match_cpu(rng, shape, dtype, elementwise):
    check_cuda_row_grad_sums(make_case(rng, shape, dtype), elementwise)


@cuda_test
@cuda_case_param
@elementwise_param
def test_cuda_combine_matches_cpu(rng, shape, dtype, elementwise):
    case = make_case(rng, shape, dtype)
    rows = (case.center, case.alpha, case.beta, case.delta)
    dx = gpu.combine(case.dy, case.x, *rows, case.cuda_tables(elementwise)[0])
    ref = cpu.combine(case.dy, case.x, *rows, case.cpu_tables(elementwise)[0])
    assert_values(dx, ref, dtype)


@cuda_test
@cuda_case_param
def test_cuda_column_grad_sums_match_cpu(rng, shape, dtype):
    case = make_case(rng, shape, dtype)
    sums = gpu.column_grad_sums(case.dy, case.x, case.center, case.scale)
    ref = cpu.column_grad_sums(case.dy, case.x, case.center, case.scale)
    for actual, expected, terms in zip(sums, ref, ref_column_grad_terms(case)):
        assert_sums(actual, terms, axis=0, tol=2 * SUM_TOL[dtype], expected=expected)


@cuda_test
@chunked_param
@dtype_param
def test_cuda_two_stage_row_moments(rng, shape, chunk, dtype):
    check_cuda_row_moments(make_case(rng, shape, dtype, offset=5.0), chunk=chunk)


@cuda_test
@chunked_param
@dtype_param
@elementwise_param
def test_cuda_two_stage_row_grad_sums(rng, shape, chunk, dtype, elementwise):
    check_cuda_row_grad_sums(make_case(rng, shape, dtype), elementwise, chunk=chunk)


@cuda_test
@pytest.mark.parametrize("k", [1, 3])
@dtype_param
@elementwise_param
@pytest.mark.parametrize("centered", [True, False], ids=["centered", "uncentered"])
def test_cuda_runs_match_the_fused_cpu_kernels(rng, simulate_gpu, k, dtype, elementwise, centered):
    r = make_runs(rng, (2, 3, 37), k, dtype, True, elementwise)  # small: simulated
    x, dy = r.case.x, r.case.dy
    fused = kernels.normalize_runs(x, k, EPS, *r.affine, centered=centered)
    fused += kernels.combine_runs(dy, x, k, *fused[1:], r.gamma, r.w, centered)
    launched = simulate_gpu()
    on_gpu = kernels.normalize_runs(x, k, EPS, *r.affine, centered=centered)
    on_gpu += kernels.combine_runs(dy, x, k, *on_gpu[1:], r.gamma, r.w, centered)
    assert launched
    for actual, expected in zip(on_gpu, fused):
        assert actual.dtype == expected.dtype
        np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


def across_the_batch(x, dy, k, gamma, beta, scaled, running):
    """Float64 reference of batch statistics over runs of k channels and every sample: y, c,
    ρ, dx, dγ, dβ, and the running estimates (mean, var) after one step with momentum 0.1."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    N, C, S = x.shape
    G = C // k
    xg = x.transpose(1, 0, 2).reshape(G, -1)  # statistic g: channels g·k .. g·k + k - 1
    mean, var = xg.mean(axis=1, keepdims=True), xg.var(axis=1, keepdims=True)
    rho = 1 / np.sqrt(var + EPS) if scaled else np.ones_like(var)
    xhat = (xg - mean) * rho
    g = (gamma.astype(np.float64)[:, None, None] * dy.transpose(1, 0, 2)).reshape(G, -1)
    dx = g - g.mean(axis=1, keepdims=True)
    if scaled:
        dx = rho * (dx - xhat * (g * xhat).mean(axis=1, keepdims=True))

    def back(a):  # (G, k·N·S) -> (N, C, S)
        return a.reshape(C, N, S).transpose(1, 0, 2)

    y = back(xhat) * gamma[:, None] + beta[:, None]
    dgamma = (dy * back(xhat)).sum(axis=(0, 2))
    m = k * N * S
    run_mean = 0.9 * running[0] + 0.1 * np.repeat(mean[:, 0], k)
    run_var = 0.9 * running[1] + 0.1 * np.repeat(var[:, 0], k) * m / (m - 1)
    return y, mean.T, rho.T, back(dx), dgamma, dy.sum(axis=(0, 2)), run_mean, run_var


@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "unscaled"])
@dtype_param
def test_statistics_across_the_batch_match_numpy(rng, simulate_gpu, where, k, scaled, dtype):
    """normalize_runs / combine_runs with `across_batch` (BN: k = 1; unscaled: mean-only BN):
    y, the statistics, dx, dγ, dβ and the running estimates moved in place, on the CPU and on
    the CUDA kernels with rows of two chunks (the second short: pooled by the statistics
    kernel)."""
    if where == "cuda":
        if dtype == np.float64:
            pytest.skip("one dtype through the CUDA path (the simulator types nothing)")
        if not CUDA_USABLE:
            pytest.skip("no CUDA GPU and Numba's CUDA simulator is off")
        simulate_gpu()
    from tinynorm.kernels import cuda

    N, C = (2, 2) if where == "cuda" else (3, 4)
    S = cuda.CHUNK + 13 if where == "cuda" else 37
    x = (2 * rng.standard_normal((N, C, S)) + 1.5).astype(dtype)
    dy = rng.standard_normal((N, C, S)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    running = [rng.uniform(0.5, 2.0, C).astype(np.float32) for _ in range(2)]
    expected = across_the_batch(x, dy, k, gamma, beta, scaled, running)
    flags = {"across_batch": True, "scaled": scaled}
    y, mean, rstd = kernels.normalize_runs(x, k, EPS, gamma, beta, **flags, running=(*running, 0.1))
    dx, dgamma, dbeta, _ = kernels.combine_runs(dy, x, k, mean, rstd, gamma, **flags)
    assert mean.shape == rstd.shape == (1, C // k)
    assert dgamma.dtype == dbeta.dtype == dtype and running[0].dtype == np.float32
    actual = (y, mean, rstd, dx, dgamma, dbeta, *running)
    tol = {np.float32: 1e-4, np.float64: 1e-10}[dtype]
    for name, a, e in zip(("y", "c", "ρ", "dx", "dγ", "dβ", "mean", "var"), actual, expected):
        if name in ("mean", "var"):  # float32 buffers
            tol = 1e-6
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_batch_renorm_statistics_match_numpy(rng, simulate_gpu, where):
    """normalize_runs / combine_runs with `renorm`: r, d from the moving μ, σ (some clipped,
    some not) at limits midway through their schedule, y = γ·(r·x̂ + d) + β, dx with r, d
    constant, dγ = Σ dy·x̃, and μ, σ moved towards μ_B, σ_B; float64 on the CPU, float32 on
    the CUDA kernels (rows of two chunks)."""
    dtype = np.float64 if where == "cpu" else np.float32
    if where == "cuda":
        if not CUDA_USABLE:
            pytest.skip("no CUDA GPU and Numba's CUDA simulator is off")
        simulate_gpu()
    from tinynorm.kernels import cuda

    N, C, S = (1, 4, cuda.CHUNK + 13) if where == "cuda" else (2, 4, 37)
    x = (2 * rng.standard_normal((N, C, S)) + 1.5).astype(dtype)
    dy = rng.standard_normal((N, C, S)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    mu = np.array([1.5, 9.0, -30.0, 1.4], np.float32)  # d clipped for channels 1 and 2
    sigma = np.array([2.0, 0.2, 8.0, 1.9], np.float32)  # r clipped for channels 1 and 2
    step = np.array(30)  # warm-up 10, rmax at 50 and dmax at 40: rmax 2, dmax 5·2/3
    r_limit, d_limit = 2.0, 5 * 2 / 3
    corrections = np.empty((2, C))
    renorm = (corrections, step, 10, 50, 40, 3.0, 5.0)
    running = (mu.copy(), sigma.copy(), 0.1)
    y, mean, rstd = kernels.normalize_runs(
        x, 1, EPS, gamma, beta, across_batch=True, running=running, renorm=renorm
    )
    dx, dgamma, dbeta, _ = kernels.combine_runs(
        dy, x, 1, mean, rstd, gamma, across_batch=True, corrections=corrections
    )

    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean_b = x64.mean(axis=(0, 2))
    std_b = np.sqrt(x64.var(axis=(0, 2)) + EPS)
    r = np.clip(std_b / sigma, 1 / r_limit, r_limit)
    d = np.clip((mean_b - mu) / sigma, -d_limit, d_limit)
    assert (r == r_limit).any() and (r == 1 / r_limit).any() and (np.abs(d) == d_limit).sum() == 2
    xhat = (x64 - mean_b[:, None]) / std_b[:, None]
    xt = r[:, None] * xhat + d[:, None]
    g = (r * gamma)[:, None] * dy64
    g_mean = g.mean(axis=(0, 2))[:, None]
    gx_mean = (g * xhat).mean(axis=(0, 2))[:, None]
    expected = {
        "corrections": np.stack([r, d]),
        "y": gamma[:, None] * xt + beta[:, None],
        "dx": (g - g_mean - xhat * gx_mean) / std_b[:, None],
        "dγ": (dy64 * xt).sum(axis=(0, 2)),
        "dβ": dy64.sum(axis=(0, 2)),
        "μ": 0.9 * mu + 0.1 * mean_b,
        "σ": 0.9 * sigma + 0.1 * std_b,
    }
    actual = {"corrections": corrections, "y": y, "dx": dx, "dγ": dgamma, "dβ": dbeta}
    actual.update({"μ": running[0], "σ": running[1]})
    for name, e in expected.items():
        tol = 1e-10 if dtype == np.float64 and name not in "μσ" else 1e-4
        np.testing.assert_allclose(actual[name], e, rtol=tol, atol=tol, err_msg=name)


def run_mixture(kind: str, x, dy, seed: int = 1):
    """normalize_mixture and combine_mixture of a batch-instance ("bin": a gate, some outside
    [0, 1]; in eval, its BN statistics the running estimates), batch-layer ("bln") or
    switchable ("sn": logits) mixture in training, with running estimates: every output, and
    the buffers and gate after the step."""
    rng = np.random.default_rng(seed)
    C = x.shape[1]
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
    running = (rng.uniform(-1, 1, C), rng.uniform(0.5, 2, C), 0.1)
    gate = rng.uniform(-0.5, 1.5, C) if kind == "bin" else None
    logits = tuple(rng.standard_normal(3) for _ in range(2)) if kind == "sn" else None
    size = np.zeros((), np.int64) if kind == "bln" else None
    mixture = kernels.Mixture(
        has_ln=kind != "bin",
        bn_fixed=kind == "bin",
        switchable=kind == "sn",
        weights=(0.0, 0.3, 0.6) if kind == "bln" else (0.0, 0.0, 0.0),
        gate=gate,
        logits=logits,
        size=size,
    )
    y, (stats, mix) = kernels.normalize_mixture(x, EPS, gamma, beta, mixture, running)
    grads = kernels.combine_mixture(dy, x, (stats, mix), EPS, gamma, mixture)
    extra = [a for a in (gate, size, mix if kind == "sn" else None) if a is not None]
    return [y, stats, *(g for g in grads if g is not None), *running[:2], *extra]


@cuda_test
@pytest.mark.parametrize(
    ("kind", "shape"),
    [("sn", (1, gpu.THREADS + 4, 2)), *((kind, None) for kind in ("bin", "bln", "sn"))],
    ids=["sn-slots", "bin-chunks", "bln-chunks", "sn-chunks"],
)
def test_cuda_mixtures_match_cpu(rng, simulate_gpu, kind, shape):
    """The mixture kernels on the GPU path against the CPU's: more samples + channels than a
    block has threads (the one-block `_mixture_sums` loops over its slots and sums the
    switchable shares across threads), and rows of two chunks, the second short (pooled by
    `_mixture_statistics`)."""
    from tinynorm.kernels import cuda

    shape = shape or (1, 2, cuda.CHUNK + 13)
    x = 2 * rng.standard_normal(shape) + 1.5
    dy = rng.standard_normal(shape)
    on_cpu = run_mixture(kind, x, dy)
    simulate_gpu()
    on_gpu = run_mixture(kind, x, dy)
    assert len(on_gpu) == len(on_cpu) >= 8
    for actual, expected in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


# numerical stability ---------------------------------------------------------------------------

BIG = 2.0**24  # float32 values are 2 apart from here on: BIG + 1 is not a float32

IMPLS = [
    pytest.param(cpu, {}, id="cpu"),
    pytest.param(gpu, {"chunk": 64}, id="cuda", marks=CUDA_MARKS),  # several chunks per row
]


@pytest.mark.parametrize(("impl", "chunk"), IMPLS)
def test_sums_accumulate_in_float64(impl, chunk):
    """float32 terms, each exact, whose sum is odd and above 2**24, so not a float32: any
    float32 accumulation, in any order, misses it; float64 gets it exactly."""
    S = 300
    ones = np.ones((1, 1, S), np.float32)
    dy = ones.copy()
    dy[0, 0, 0] = BIG
    total = BIG + S - 1
    center = np.zeros((1, 1), np.float32)
    no_table = None if impl is gpu else np.empty((0, 0), np.float32)
    for w in (no_table, np.ones((1, S), np.float32)):
        sum_g, sum_gx = impl.row_grad_sums(dy, ones, center, w, **chunk)
        assert sum_g[0, 0] == total and sum_gx[0, 0] == total

    mean, _ = impl.row_moments(dy, **chunk)
    np.testing.assert_allclose(mean[0, 0], total / S, rtol=1e-12)

    # over n: dy = BIG, 1, 2 at every position, x̂ = (1 - 0)·1
    dy = np.ones((3, 1, S), np.float32) * np.float32([BIG, 1, 2])[:, None, None]
    x, center, scale = np.ones_like(dy), np.zeros((3, 1), np.float32), np.ones((3, 1), np.float32)
    db, dw = impl.column_grad_sums(dy, x, center, scale)
    np.testing.assert_array_equal(db, BIG + 3)
    np.testing.assert_array_equal(dw, BIG + 3)


def large_offset_data(rng, shape):
    """float32 data 10⁴ + N(0, 1), and the float64 variance of exactly those values."""
    x = (1e4 + rng.standard_normal(shape)).astype(np.float32)
    return x, x.astype(np.float64).var(axis=2)


def test_cpu_variance_is_stable_for_a_large_offset(rng):
    x, truth = large_offset_data(rng, (2, 2, 10_000))
    mean, m2 = cpu.row_moments(x)
    np.testing.assert_allclose(m2 / x.shape[2], truth, rtol=0, atol=1e-3)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=2), rtol=1e-12)


@cuda_test
def test_cuda_variance_is_stable_for_a_large_offset(rng):
    x, truth = large_offset_data(rng, (1, 1, 1000))
    mean, m2 = gpu.row_moments(x, chunk=128)  # 8 chunks, folded by Chan's formula
    np.testing.assert_allclose(m2 / x.shape[2], truth, rtol=0, atol=1e-3)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=2), rtol=1e-12)


# the dispatch layer ----------------------------------------------------------------------------


def assert_same_results(actual, expected):
    """Equal arrays (or tuples of them): same kernel, same inputs. Floats up to a few roundings:
    the kernels may fuse multiply-adds ("contract"), and Numba may run a call on another
    specialization (a C-contiguous array on one compiled for any layout) whose fusions differ."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_results(a, e)
        return
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype.kind == "f":  # a few roundings of terms of size ~10, cancellation included
        eps = np.finfo(actual.dtype).eps
        np.testing.assert_allclose(actual, expected, rtol=8 * eps, atol=64 * eps)
    else:
        np.testing.assert_array_equal(actual, expected)


@dtype_param
def test_dispatch_runs_the_cpu_kernels_on_numpy_arrays(rng, dtype):
    c = make_case(rng, (2, 3, 37), dtype)
    none = np.empty((0, 0), dtype)
    ones, zeros = np.ones_like(c.w), np.zeros_like(c.b)
    norm_rows = (c.center, c.scale, c.shift)
    combine_rows = (c.center, c.alpha, c.beta, c.delta)
    pairs = [
        (kernels.row_moments(c.x), cpu.row_moments(c.x)),
        (kernels.normalize(c.x, *norm_rows), cpu.normalize(c.x, *norm_rows, none, none)),
        (kernels.normalize(c.x, *norm_rows, c.w, c.b), cpu.normalize(c.x, *norm_rows, c.w, c.b)),
        # one table alone: the other is the identity
        (kernels.normalize(c.x, *norm_rows, w=c.w), cpu.normalize(c.x, *norm_rows, c.w, zeros)),
        (kernels.normalize(c.x, *norm_rows, b=c.b), cpu.normalize(c.x, *norm_rows, ones, c.b)),
        (kernels.row_grad_sums(c.dy, c.x, c.center), cpu.row_grad_sums(c.dy, c.x, c.center, none)),
        (
            kernels.row_grad_sums(c.dy, c.x, c.center, c.w),
            cpu.row_grad_sums(c.dy, c.x, c.center, c.w),
        ),
        (kernels.combine(c.dy, c.x, *combine_rows), cpu.combine(c.dy, c.x, *combine_rows, none)),
        (
            kernels.combine(c.dy, c.x, *combine_rows, c.w),
            cpu.combine(c.dy, c.x, *combine_rows, c.w),
        ),
        (
            kernels.column_grad_sums(c.dy, c.x, c.center, c.scale),
            cpu.column_grad_sums(c.dy, c.x, c.center, c.scale),
        ),
    ]
    for actual, expected in pairs:
        assert_same_results(actual, expected)


def test_dispatch_makes_strided_input_contiguous(rng):
    base = rng.standard_normal((2, 3, 20)).astype(np.float32)
    for x in (base[:, :, ::2], base.transpose(1, 0, 2)):
        assert not x.flags.c_contiguous
        assert_same_results(kernels.row_moments(x), cpu.row_moments(np.ascontiguousarray(x)))


def test_dispatch_of_the_run_kernels(rng):
    """One table alone gets the identity as its partner; per-run statistics broadcast to (N, G);
    runs must divide the channels."""
    c = make_case(rng, (2, 6, 37), np.float32)
    ones, zeros = np.ones_like(c.w), np.zeros_like(c.b)
    assert_same_results(
        kernels.normalize_runs(c.x, 2, EPS, w=c.w),
        kernels.normalize_runs(c.x, 2, EPS, None, None, c.w, zeros),
    )
    assert_same_results(
        kernels.normalize_runs(c.x, 2, EPS, b=c.b),
        kernels.normalize_runs(c.x, 2, EPS, None, None, ones, c.b),
    )
    per_sample = rng.uniform(0.5, 2.0, (2, 1))
    assert_same_results(
        kernels.combine_runs(c.dy, c.x, 3, 0.25, per_sample),
        kernels.combine_runs(c.dy, c.x, 3, np.full((2, 2), 0.25), np.repeat(per_sample, 2, axis=1)),
    )
    for k in (0, 4, 7):
        with pytest.raises(ValueError, match=f"runs of k = {k} rows must divide the 6 channels"):
            kernels.normalize_runs(c.x, k, EPS)
        with pytest.raises(ValueError, match="must divide"):
            kernels.combine_runs(c.dy, c.x, k, 0.0, 1.0)


def test_dispatch_broadcasts_per_row_arguments(rng):
    N, C, S = 3, 4, 10
    x = rng.standard_normal((N, C, S)).astype(np.float32)
    dy = rng.standard_normal((N, C, S)).astype(np.float32)
    per_channel = rng.uniform(
        0.5, 2.0, (1, C)
    )  # float64: cast to x's dtype, except as combine's coefficients
    per_sample = rng.uniform(-1.0, 1.0, (N, 1))
    channel_vector = rng.uniform(-1.0, 1.0, C)  # (C,) broadcasts like (1, C)
    none = np.empty((0, 0), np.float32)

    def full(a, dtype=np.float32):
        return np.ascontiguousarray(np.broadcast_to(a, (N, C)), dtype)

    assert_same_results(
        kernels.normalize(x, per_sample, per_channel, 0.25),
        cpu.normalize(x, full(per_sample), full(per_channel), full(0.25), none, none),
    )
    assert_same_results(
        kernels.row_grad_sums(dy, x, channel_vector),
        cpu.row_grad_sums(dy, x, full(channel_vector), none),
    )
    coefficients = (per_channel, per_sample, channel_vector)  # kept in float64
    assert_same_results(
        kernels.combine(dy, x, 0.5, *coefficients),
        cpu.combine(dy, x, full(0.5), *(full(a, np.float64) for a in coefficients), none),
    )
    assert_same_results(
        kernels.column_grad_sums(dy, x, per_sample, 2),
        cpu.column_grad_sums(dy, x, full(per_sample), full(2.0)),
    )
    with pytest.raises(ValueError):
        kernels.normalize(x, np.zeros((N + 1, C)), 1.0, 0.0)


CALLS = {
    "row_moments": lambda x: kernels.row_moments(x),
    "normalize": lambda x: kernels.normalize(x, 0.0, 1.0, 0.0),
    "row_grad_sums": lambda x: kernels.row_grad_sums(x, x, 0.0),
    "combine": lambda x: kernels.combine(x, x, 0.0, 1.0, 0.0, 0.0),
    "column_grad_sums": lambda x: kernels.column_grad_sums(x, x, 0.0, 1.0),
    "normalize_runs": lambda x: kernels.normalize_runs(x, 1, EPS),
    "combine_runs": lambda x: kernels.combine_runs(x, x, 1, 0.0, 1.0),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 4, 5)], ids=str)
def test_dispatch_rejects_input_that_is_not_3d(name, shape):
    with pytest.raises(ValueError, match=re.escape(f"(N, C, S) array, got shape {shape}")):
        CALLS[name](np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", ["row_grad_sums", "combine", "column_grad_sums", "combine_runs"])
def test_dispatch_rejects_a_gradient_that_is_not_3d(name):
    x, dy = np.zeros((2, 3, 4), np.float32), np.zeros((6, 4), np.float32)
    call = {
        "row_grad_sums": lambda: kernels.row_grad_sums(dy, x, 0.0),
        "combine": lambda: kernels.combine(dy, x, 0.0, 1.0, 0.0, 0.0),
        "column_grad_sums": lambda: kernels.column_grad_sums(dy, x, 0.0, 1.0),
        "combine_runs": lambda: kernels.combine_runs(dy, x, 1, 0.0, 1.0),
    }[name]
    with pytest.raises(ValueError, match=re.escape("got shape (6, 4)")):
        call()


# the kernels stand apart from the autograd engine ------------------------------------------------

KERNELS_DIR = Path(kernels.__file__).parent
ENGINE = ("autograd", "tensor", "ops", "nn")


def imported_modules(path: Path, package: str = "tinynorm.kernels"):
    """The absolute names a module file imports, inside functions too, relative imports resolved
    against `package`. `from M import a` gives both M and M.a (a may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{module}" if module else base
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def is_engine(name: str) -> bool:
    """The engine's modules, or the bare package (whose __init__ imports the engine)."""
    engine = [f"tinynorm.{m}" for m in ENGINE]
    return name == "tinynorm" or any(name == e or name.startswith(e + ".") for e in engine)


def test_import_scan_would_catch_an_engine_import(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from . import cpu
            from ..autograd import Function

            def lazy():
                from tinynorm.nn import functional
            """
        )
    )
    names = imported_modules(source)
    assert {"numpy", "tinynorm.kernels.cpu", "tinynorm.autograd.Function"} <= names
    assert sorted(n for n in names if is_engine(n)) == [
        "tinynorm.autograd",
        "tinynorm.autograd.Function",
        "tinynorm.nn",
        "tinynorm.nn.functional",
    ]


def test_kernel_files_do_not_import_the_engine():
    files = sorted(KERNELS_DIR.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "cpu.py", "cuda.py"}
    assert "tinynorm.kernels.cpu" in imported_modules(KERNELS_DIR / "__init__.py")
    offending = {f.name: sorted(filter(is_engine, imported_modules(f))) for f in files}
    assert not any(offending.values()), f"kernels import the engine: {offending}"


def test_kernels_load_as_a_standalone_package(tmp_path):
    """Loaded as a top-level package `kernels` (without tinynorm's __init__), the kernels and the
    CUDA module import and run, and no tinynorm module is loaded. A fresh Numba cache: entries
    cached under the name tinynorm.kernels.cpu would import that module when loaded."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(KERNELS_DIR.parent)!r})
        import numpy as np
        import kernels, kernels.cuda
        mean, m2 = kernels.row_moments(np.arange(6.0).reshape(1, 2, 3))
        assert mean.tolist() == [[1.0, 4.0]] and m2.tolist() == [[2.0, 2.0]], (mean, m2)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "tinynorm")
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


# ---- the column kernels: batch norm of an (N, C) input, channels as columns ----------------------
COLUMN_SHAPES = [(5, 3), (7, 130), (1, 64), (300, 65)]  # partial and whole blocks of 64 columns


def column_reference(dy, x, center, alpha, beta, delta, scale, shift):
    """The four column kernels' results by NumPy, in float64."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(axis=0)
    return {
        "moments": (mean, ((x64 - mean) ** 2).sum(axis=0)),
        "normalize": (x64 - center) * scale + shift,
        "sums": (dy64.sum(axis=0), (dy64 * (x64 - center)).sum(axis=0)),
        "combine": alpha * dy64 + beta * (x64 - center) + delta,
    }


def column_results(dy, x, center, alpha, beta, delta, scale, shift):
    return {
        "moments": kernels.column_moments(x),
        "normalize": kernels.normalize_columns(x, center, scale, shift),
        "sums": kernels.column_sums(dy, x, center),
        "combine": kernels.combine_columns(dy, x, center, alpha, beta, delta),
    }


def column_case(rng, shape, dtype):
    C = shape[1]
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    center = x.astype(np.float64).mean(axis=0).astype(dtype)
    alpha, beta, delta, scale, shift = (rng.standard_normal(C) for _ in range(5))
    return dy, x, center, alpha, beta, delta, scale.astype(dtype), shift.astype(dtype)


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_column_kernels_match_numpy(rng, shape, dtype):
    case = column_case(rng, shape, dtype)
    expected, actual = column_reference(*case), column_results(*case)
    scale = np.abs(case[1]).max() * shape[0]  # sums of N values of this size
    for name in ("moments", "sums"):
        for a, e in zip(actual[name], expected[name]):
            assert a.dtype == np.float64 and a.shape == (shape[1],)
            np.testing.assert_allclose(a, e, rtol=TOL[dtype] * 10, atol=TOL[dtype] * scale)
    for name in ("normalize", "combine"):
        assert actual[name].dtype == dtype and actual[name].shape == shape
        np.testing.assert_allclose(
            actual[name], expected[name], rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10
        )


@pytest.mark.parametrize("shape", COLUMN_SHAPES[:2], ids=str)
def test_column_kernels_composed_for_the_gpu_match_cpu(rng, simulate_gpu, shape):
    """On a GPU the column kernels are composed from array operations: the same results."""
    case = column_case(rng, shape, np.float32)
    on_cpu = column_results(*case)
    simulate_gpu()
    on_gpu = column_results(*case)
    for name, expected in on_cpu.items():
        pairs = (
            zip(on_gpu[name], expected)
            if isinstance(expected, tuple)
            else [(on_gpu[name], expected)]
        )
        for a, e in pairs:
            assert a.dtype == e.dtype
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


# ---- im2col / col2im: the convolution's column kernels ----------------------------------------
# (input shape, kernel, stride, padding): square and non-square kernels, stride 2, padding,
# a kernel as large as the padded input, and sizes that are not multiples of anything
CONV_CASES = [
    ((2, 3, 7, 5), (3, 3), (1, 1), (1, 1)),
    ((1, 2, 9, 8), (2, 3), (2, 1), (0, 1)),
    ((3, 1, 6, 6), (5, 5), (1, 1), (2, 2)),
    ((1, 1, 4, 3), (4, 3), (1, 1), (0, 0)),
    ((2, 2, 7, 7), (3, 2), (2, 3), (1, 1)),
]
conv_param = pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), CONV_CASES, ids=str)


def ref_im2col(x, kernel, stride, padding):
    """Image n, row (c, i, j), column (h, w) = x[n, c, h·sh + i - ph, w·sw + j - pw], by loops."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    cols = np.zeros((N, C, kh, kw, OH, OW), x.dtype)
    for n, c, i, j, h, w in np.ndindex(cols.shape):
        y, z = h * sh + i - ph, w * sw + j - pw
        if 0 <= y < H and 0 <= z < W:
            cols[n, c, i, j, h, w] = x[n, c, y, z]
    return cols.reshape(N, C * kh * kw, OH * OW)


@conv_param
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cpu_im2col_and_its_adjoint_col2im(rng, shape, kernel, stride, padding, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    cols = kernels.im2col(x, kernel, stride, padding)
    np.testing.assert_array_equal(cols, ref_im2col(x, kernel, stride, padding))
    d = rng.standard_normal(cols.shape).astype(dtype)
    dx = kernels.col2im(d, shape, kernel, stride, padding)
    # col2im is the transpose of im2col: <im2col(x), d> = <x, col2im(d)> for every x and d
    lhs = (cols.astype(np.float64) * d).sum()
    np.testing.assert_allclose(lhs, (x.astype(np.float64) * dx).sum(), rtol=TOL[dtype] * 10)
    basis = np.zeros(shape, dtype)
    basis[-1, -1, -1, -1] = 1  # col2im(d) at one position = Σ of d over where it was copied
    picked = ref_im2col(basis, kernel, stride, padding) != 0
    np.testing.assert_allclose(
        dx[-1, -1, -1, -1],
        d[picked].astype(np.float64).sum(),
        rtol=TOL[dtype] * 10,
        atol=TOL[dtype],
    )


@cuda_test
@conv_param
def test_cuda_im2col_and_col2im_match_cpu(rng, shape, kernel, stride, padding):
    x = rng.standard_normal(shape).astype(np.float32)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    cols = np.empty((N, C, kh, kw, OH, OW), np.float32)
    gpu.im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols)
    expected = kernels.im2col(x, kernel, stride, padding)  # the CPU kernel
    np.testing.assert_array_equal(cols.reshape(expected.shape), expected)
    d = rng.standard_normal(cols.shape).astype(np.float32)
    dx = np.empty(shape, np.float32)
    gpu.col2im(d, sh, sw, ph, pw, dx)
    expected = kernels.col2im(d.reshape(N, C * kh * kw, -1), shape, kernel, stride, padding)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "kernel", "padding"),
    [
        ((2, 3, 7, 5), (3, 3), (1, 1)),
        ((1, 2, 6, 9), (2, 5), (0, 2)),
        ((3, 1, 4, 4), (4, 4), (0, 0)),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cpu_shifted_rows_are_im2col_with_extra_columns(rng, shape, kernel, padding, dtype):
    """Stride 1: the shifted rows of the padded planes hold im2col's columns at the positions
    ow < OW of each output row (the rest are dropped by the convolution), and add_shifted_rows
    is their adjoint."""
    (N, C, H, W), (kh, kw), (ph, pw) = shape, kernel, padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    OH, OW = Hp - kh + 1, Wp - kw + 1
    x = rng.standard_normal(shape).astype(dtype)
    flat = np.zeros(N * C * Hp * Wp + kw - 1, dtype)
    flat[: N * C * Hp * Wp].reshape(N, C, Hp, Wp)[:, :, ph : ph + H, pw : pw + W] = x
    cols = kernels.shifted_rows(flat, (N, C, Hp, Wp), kernel)
    assert cols.shape == (N, C * kh * kw, OH * Wp)
    kept = cols.reshape(N, -1, OH, Wp)[..., :OW].reshape(N, -1, OH * OW)
    np.testing.assert_array_equal(kept, ref_im2col(x, kernel, (1, 1), padding))
    d = rng.standard_normal(cols.shape).astype(dtype)
    back = kernels.add_shifted_rows(d, (N, C, Hp, Wp), kernel, np.full_like(flat, np.nan))
    lhs = (cols.astype(np.float64) * d).sum()  # <shifted_rows(v), d> = <v, add_shifted_rows(d)>
    np.testing.assert_allclose(lhs, (flat.astype(np.float64) * back).sum(), rtol=TOL[dtype] * 10)


# ---- max pooling: values with argmax, and the gradient scatter -------------------------------
POOL_CASES = [
    ((2, 3, 7, 5), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 6, 7), (3, 3), (2, 2), (1, 1)),  # overlapping windows, padding
    ((2, 1, 5, 5), (3, 2), (1, 1), (1, 0)),  # stride 1: every value in several windows
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0)),
]
pool_param = pytest.mark.parametrize(("shape", "kernel", "stride", "padding"), POOL_CASES, ids=str)


def ref_max_pool(x, dy_shape_source, kernel, stride, padding):
    """Values and the scatter of a given dy, by loops over every window (ties: first max)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.empty((N, C, OH, OW), x.dtype)
    dy = dy_shape_source((N, C, OH, OW))
    dx = np.zeros_like(x)
    for n, c, oh, ow in np.ndindex(y.shape):
        cells = [(oh * sh + i - ph, ow * sw + j - pw) for i in range(kh) for j in range(kw)]
        cells = [(h, w) for h, w in cells if 0 <= h < H and 0 <= w < W]
        h, w = max(cells, key=lambda hw: (x[n, c, hw[0], hw[1]], -cells.index(hw)))
        y[n, c, oh, ow] = x[n, c, h, w]
        dx[n, c, h, w] += dy[n, c, oh, ow]
    return y, dy, dx


@pool_param
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cpu_max_pool_and_its_backward(rng, shape, kernel, stride, padding, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::3] = x.flat[0]  # ties: the first maximum of a window wins
    y_ref, dy, dx_ref = ref_max_pool(
        x, lambda s: rng.standard_normal(s).astype(dtype), kernel, stride, padding
    )
    y, arg = kernels.max_pool(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, y_ref)
    dx = kernels.max_pool_backward(dy, arg, shape, kernel, stride, padding)
    np.testing.assert_allclose(dx, dx_ref, rtol=TOL[dtype], atol=TOL[dtype])


@cuda_test
@pool_param
def test_cuda_max_pool_matches_cpu(rng, shape, kernel, stride, padding):
    x = rng.standard_normal(shape).astype(np.float32)
    y_cpu, arg_cpu = kernels.max_pool(x, kernel, stride, padding)
    y, arg = np.empty_like(y_cpu), np.empty_like(arg_cpu)
    gpu.max_pool(x, *kernel, *stride, *padding, y, arg)
    np.testing.assert_array_equal(y, y_cpu)
    np.testing.assert_array_equal(arg, arg_cpu)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.empty_like(x)
    gpu.max_pool_backward(dy, arg, *kernel, *stride, *padding, dx)
    expected = kernels.max_pool_backward(dy, arg_cpu, shape, kernel, stride, padding)
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=1e-6)


def test_max_pool_lets_nan_win_and_never_points_into_the_padding():
    x = np.full((1, 1, 3, 3), np.nan, np.float32)
    y, arg = kernels.max_pool(x, (3, 3), (1, 1), (1, 1))
    assert np.isnan(y).all()
    dx = kernels.max_pool_backward(np.ones_like(y), arg, x.shape, (3, 3), (1, 1), (1, 1))
    assert dx.sum() == y.size  # every gradient landed inside x
    x2 = np.array([[[[np.nan, 1.0], [2.0, 3.0]]]], np.float32)
    assert np.isnan(kernels.max_pool(x2, (2, 2), (2, 2), (0, 0))[0]).all()


# ---- transpose: the blocked 2-d transposed copy -------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (33, 31), (64, 65), (257, 5)])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transpose_is_a_contiguous_copy_of_the_transpose(rng, shape, dtype):
    """Shapes on, off and across tile edges (TILE = 32); the input may be a strided view."""
    x = rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)[:, ::2]
    t = kernels.transpose(x)
    assert t.flags.c_contiguous and t.dtype == dtype
    np.testing.assert_array_equal(t, x.T)


def test_transpose_rejects_other_ranks():
    with pytest.raises(ValueError, match="2-d array, got shape"):
        kernels.transpose(np.zeros((2, 3, 4)))


# FRN's thresholded linear unit ------------------------------------------------------------------


def ref_tlu(dz, x, tau):
    """z = max(x, τ[c]), dx = dz where x > τ[c], dτ = Σ dz where x ≤ τ[c], in NumPy."""
    t = tau.reshape(1, -1, 1)
    passed = x > t
    return np.maximum(x, t), np.where(passed, dz, 0), np.where(passed, 0, dz).sum(axis=(0, 2))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 4, 37), (1, 1, 1), (2, 3, 0)])
def test_cpu_tlu_matches_numpy(rng, shape, dtype):
    x, dz = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    tau = rng.standard_normal(shape[1]).astype(dtype)
    x[..., :1] = tau[:, None]  # ties: the gradient goes to τ
    z, dx, dtau = ref_tlu(dz, x, tau)
    np.testing.assert_array_equal(kernels.tlu(x, tau), z)
    got_dx, got_dtau = kernels.tlu_backward(dz, z, tau)
    np.testing.assert_array_equal(got_dx, dx)
    np.testing.assert_allclose(got_dtau, dtau, rtol=1e-6, atol=1e-6)
    assert got_dtau.dtype == np.float64


@cuda_test
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 2, 37), (2, 3, 1), (1, 1, 2 * gpu.THREADS + 5)])
def test_cuda_tlu_matches_cpu(rng, shape, dtype):
    """Rows longer and shorter than a block, a block per channel in the backward."""
    x, dz = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    tau = rng.standard_normal(shape[1]).astype(dtype)
    z = gpu.tlu(x, tau)
    np.testing.assert_array_equal(z, kernels.tlu(x, tau))
    dx, dtau = gpu.tlu_backward(dz, z, tau)
    cpu_dx, cpu_dtau = kernels.tlu_backward(dz, z, tau)
    np.testing.assert_array_equal(dx, cpu_dx)
    np.testing.assert_allclose(dtau, cpu_dtau, rtol=1e-12, atol=1e-12)
