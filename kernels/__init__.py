"""Numba kernels (normalization, im2col, max pooling): `@njit` for NumPy arrays, `@cuda.jit`
for CuPy arrays.

Plain arrays in, plain arrays out: nothing here imports the autograd engine. This module is the
one place that dispatches on the array type; `cpu.py` and `cuda.py` hold the kernels, which
see every input as x[n, c, s] (S = product of spatial dims) and work on rows r = (n, c):

    row_moments(x)                          mean[r], M2[r] = Σ_s (x - mean)²
    normalize(x, center, scale, shift, w, b)
                                            (x - center[r])·scale[r]·w[c, s] + shift[r] + b[c, s]
    row_grad_sums(dy, x, center, w)         Σ_s dy·w, Σ_s dy·w·(x - center[r])
    combine(dy, x, center, alpha, beta, delta, w)
                                            alpha[r]·dy·w[c, s] + beta[r]·(x - center[r]) + delta[r]
    column_grad_sums(dy, x, center, scale)  Σ_n dy, Σ_n dy·(x - center[r])·scale[r]

and, for the convolution's single GEMM, `im2col` (the window columns of an image batch) and its
adjoint `col2im`; for max pooling, `max_pool` (values and argmax) and `max_pool_backward`.

Row arguments may be anything that broadcasts to (N, C); `w`, `b` are (C, S) tables or None.
Sums come back in float64, arrays in x's dtype.
"""

from __future__ import annotations

import numpy as np

from . import cpu


def on_gpu(x) -> bool:
    """True for a CuPy array (decided without importing CuPy)."""
    return type(x).__module__.startswith("cupy")


def _xp(x):
    if on_gpu(x):
        import cupy

        return cupy
    return np


def _impl(x):
    if on_gpu(x):
        from . import cuda

        return cuda
    return cpu


def _view(x):
    """x (N, C, S) contiguous, or an error naming the shape."""
    if x.ndim != 3:
        raise ValueError(f"kernels expect an (N, C, S) array, got shape {x.shape}")
    return _xp(x).ascontiguousarray(x)


def _filled(shape, a, x):
    """A fresh contiguous array of `shape` in x's dtype holding `a` broadcast."""
    out = _xp(x).empty(shape, x.dtype)
    out[...] = a
    return out


def _rows(a, x):
    """A per-row argument as an (N, C) array."""
    return _filled(x.shape[:2], a, x)


def _tables(x, *tables):
    """Elementwise affine tables as (C, S) arrays; None stays None on the GPU and becomes an
    empty (0, 0) array for the CPU kernels."""
    empty = None if on_gpu(x) else np.empty((0, 0), x.dtype)
    return [empty if t is None else _filled(x.shape[1:], t, x) for t in tables]


def row_moments(x):
    x = _view(x)
    return _impl(x).row_moments(x)


def normalize(x, center, scale, shift, w=None, b=None):
    x = _view(x)
    rows = [_rows(a, x) for a in (center, scale, shift)]
    if w is None and b is not None:
        w = 1
    if b is None and w is not None:
        b = 0
    if on_gpu(x):
        return _impl(x).normalize(x, *rows, *_tables(x, w, b))
    return cpu.normalize(x, *rows, *_tables(x, w, b), np.empty_like(x))


def row_grad_sums(dy, x, center, w=None):
    x, dy = _view(x), _view(dy)
    return _impl(x).row_grad_sums(dy, x, _rows(center, x), *_tables(x, w))


def combine(dy, x, center, alpha, beta, delta, w=None):
    x, dy = _view(x), _view(dy)
    rows = [_rows(a, x) for a in (center, alpha, beta, delta)]
    if on_gpu(x):
        return _impl(x).combine(dy, x, *rows, *_tables(x, w))
    return cpu.combine(dy, x, *rows, *_tables(x, w), np.empty_like(x))


def column_grad_sums(dy, x, center, scale):
    x, dy = _view(x), _view(dy)
    return _impl(x).column_grad_sums(dy, x, _rows(center, x), _rows(scale, x))


def im2col(
    x,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out=None,
):
    """The convolution's columns: x (N, C, H, W) -> (C·kh·kw, N·OH·OW), zero padding implied;
    written into `out` (a contiguous array of that shape) when given."""
    x = _xp(x).ascontiguousarray(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    shape = (C, kh, kw, N, OH, OW)
    cols = _xp(x).empty(shape, x.dtype) if out is None else out.reshape(shape)
    _impl(x).im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols)
    return cols.reshape(C * kh * kw, N * OH * OW)


def col2im(
    dcols,
    shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out=None,
):
    """The adjoint of `im2col`: dcols (C·kh·kw, N·OH·OW) summed back into dx of `shape`
    (N, C, H, W), overlapping windows adding up; dx is `out` (contiguous) when given."""
    N, C, H, W = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    cols = _xp(dcols).ascontiguousarray(dcols).reshape(C, kh, kw, N, OH, OW)
    dx = _xp(dcols).empty(shape, dcols.dtype) if out is None else out
    return _impl(dcols).col2im(cols, sh, sw, ph, pw, dx)


def max_pool(x, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
    """y (N, C, OH, OW), the max of each window (padding never wins), and the window offset of
    the first maximum (int8 if it fits)."""
    xp = _xp(x)
    x = xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = xp.empty((N, C, OH, OW), x.dtype)
    arg = xp.empty((N, C, OH, OW), np.int8 if kh * kw <= 127 else np.int32)
    _impl(x).max_pool(x, kh, kw, sh, sw, ph, pw, y, arg)
    return y, arg


def max_pool_backward(
    dy,
    arg,
    shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
):
    """dx of `shape` (N, C, H, W): each dy at its window's argmax, overlaps adding up."""
    xp = _xp(dy)
    dy = xp.ascontiguousarray(dy)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = xp.empty(shape, dy.dtype)
    return _impl(dy).max_pool_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx)
