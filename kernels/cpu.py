"""CPU normalization kernels: `@njit(parallel=True, cache=True)` over the (N, C, S) view.

Every norm layer sees its input as x[n, c, s] (S = product of the spatial dims) and works on
rows r = (n, c), each a contiguous run of S values. Four kernels serve every variant:

    row_moments(x)                      -> per row: mean, M2 = Σ (x - mean)²
    normalize(x, center, scale, shift, w, b)
        y = (x - center[r]) · scale[r] · w[c, s] + shift[r] + b[c, s]
    row_grad_sums(dy, x, center, w)     -> per row: Σ dy·w, Σ dy·w·(x - center[r])
    combine(dy, x, center, alpha, beta, delta, w)
        dx = alpha[r] · dy · w[c, s] + beta[r] · (x - center[r]) + delta[r]

plus `column_grad_sums` for an elementwise affine (LayerNorm's weight over normalized_shape):
per position (c, s), Σ_n dy and Σ_n dy·x̂. Which rows a statistic pools (per channel for
BatchNorm, per row for InstanceNorm, per sample and group for GroupNorm and LayerNorm) is decided
by the caller on the small (N, C) arrays; the kernels never need to know.

The per-sample statistics (IN, GN, LN) each cover a run of k consecutive rows, one contiguous
block small enough to stay in cache, so two fused kernels do the same work in fewer passes over
memory: `normalize_runs` (the run's moments, then y: 1 read of x, 1 write) and `combine_runs`
(the row sums, then dx: 2 reads, 1 write). All of them share the per-row loops below.
Between row_moments and normalize (row_grad_sums and combine) of the other statistics,
`statistics` (`coefficients`) turn the rows' sums into each row's coefficients: serial loops
over the statistics, with the GPU kernels' per-statistic bodies (`formulas`).

`w` and `b` are (C, S) tables for an elementwise affine, or (0, 0) arrays for none (a
per-channel affine is folded into scale/shift by the caller, or given to the run kernels as
(C,) gamma and beta). Sums accumulate in float64; values are stored in the input's dtype. The
coefficients of dx (alpha, beta, delta) are float64 up to each value's final multiply-add:
beta ~ ρ² would underflow float32 once σ passes ~1e19.
Centering on the row's mean before multiplying keeps float32 accurate when |mean| ≫ std.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .formulas import dx_terms, finalize_gradient, finalize_statistic
from .mixtures import (
    logit_grads,
    mixture_row_gradients,
    mixture_rows,
    mixture_statistics,
    mixture_sums,
)

FLAGS = {"reassoc", "contract", "nsz"}  # SIMD reductions; keeps NaN and inf semantics
COLUMN_BLOCK = 1024  # positions per task in column_grad_sums


@njit(cache=True, inline="always")
def _rows(a):
    """An (N, C, S) array (C-contiguous) as its N·C rows, (N·C, S); row r = (r // C, r % C)."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2])


@njit(cache=True, fastmath=FLAGS, inline="always")
def _moments(x, lo, hi):
    """Mean and M2 = Σ (x - mean)² of the rows lo..hi-1 of x (R, S) (one contiguous block), in
    float64: two passes over the block while it is in cache."""
    S = x.shape[1]
    total = 0.0
    for r in range(lo, hi):
        for i in range(S):
            total += x[r, i]
    mean = total / ((hi - lo) * S)
    sq = 0.0
    for r in range(lo, hi):
        for i in range(S):
            d = x[r, i] - mean
            sq += d * d
    return mean, sq


@njit(cache=True, fastmath=FLAGS, inline="always")
def _normalize_row(x, y, r, c, center, scale, shift, w, b):
    """y[r] = (x[r] - center) · scale · w[c] + shift + b[c] for row r of (R, S) arrays and
    channel c of the (C, S) tables (none when w is empty); the scalars in x's dtype."""
    S = x.shape[1]
    if w.size > 0:
        for i in range(S):
            y[r, i] = (x[r, i] - center) * scale * w[c, i] + (shift + b[c, i])
    else:
        for i in range(S):
            y[r, i] = (x[r, i] - center) * scale + shift


@njit(cache=True, fastmath=FLAGS, inline="always")
def _row_grad_sums(dy, x, r, c, center, w):
    """Σ_s dy·w[c] and Σ_s dy·w[c]·(x - center) over row r, in float64 (w = 1 when empty)."""
    S = x.shape[1]
    a = 0.0
    b = 0.0
    if w.size > 0:
        for i in range(S):
            g = np.float64(dy[r, i] * w[c, i])
            a += g
            b += g * (x[r, i] - center)
    else:
        for i in range(S):
            g = np.float64(dy[r, i])
            a += g
            b += g * (x[r, i] - center)
    return a, b


@njit(cache=True, fastmath=FLAGS, inline="always")
def _combine_row(dy, x, dx, r, c, center, alpha, beta, delta, w):
    """dx[r] = alpha · dy · w[c] + beta · (x - center) + delta (w = 1 when empty); center in
    x's dtype, alpha, beta, delta in float64 (each value computed in float64, then stored)."""
    S = x.shape[1]
    if w.size > 0:
        for i in range(S):
            dx[r, i] = alpha * dy[r, i] * w[c, i] + beta * (x[r, i] - center) + delta
    else:
        for i in range(S):
            dx[r, i] = alpha * dy[r, i] + beta * (x[r, i] - center) + delta


@njit(parallel=True, cache=True, fastmath=FLAGS)
def row_moments(x):
    """x (N, C, S) -> mean (N, C), m2 (N, C) in float64; two passes over each cached row."""
    N, C, _ = x.shape
    rows = _rows(x)
    mean = np.empty(N * C)
    m2 = np.empty(N * C)
    for r in prange(N * C):
        mean[r], m2[r] = _moments(rows, r, r + 1)
    return mean.reshape(N, C), m2.reshape(N, C)


@njit(parallel=True, cache=True, fastmath=FLAGS)
def normalize(x, center, scale, shift, w, b, y=None):
    """y = (x - center[r]) · scale[r] · w[c, s] + shift[r] + b[c, s]; row arrays (N, C) in x's
    dtype. Pass `y` allocated by NumPy: its large arrays get huge pages, so first writes fault
    less."""
    N, C, _ = x.shape
    if y is None:
        y = np.empty_like(x)
    rows, out = _rows(x), _rows(y)
    center, scale, shift = center.reshape(N * C), scale.reshape(N * C), shift.reshape(N * C)
    for r in prange(N * C):
        c = r % C if w.size > 0 else 0
        _normalize_row(rows, out, r, c, center[r], scale[r], shift[r], w, b)
    return y


@njit(parallel=True, cache=True, fastmath=FLAGS)
def row_grad_sums(dy, x, center, w):
    """Per row, in float64: Σ_s dy·w and Σ_s dy·w·(x - center[r]) (w = 1 when empty)."""
    N, C, _ = x.shape
    rows, grads, center = _rows(x), _rows(dy), center.reshape(N * C)
    sum_g = np.empty(N * C)
    sum_gx = np.empty(N * C)
    for r in prange(N * C):
        c = r % C if w.size > 0 else 0
        sum_g[r], sum_gx[r] = _row_grad_sums(grads, rows, r, c, center[r], w)
    return sum_g.reshape(N, C), sum_gx.reshape(N, C)


@njit(parallel=True, cache=True, fastmath=FLAGS)
def combine(dy, x, center, alpha, beta, delta, w, dx=None):
    """dx = alpha[r] · dy · w[c, s] + beta[r] · (x - center[r]) + delta[r]; center in x's
    dtype, the coefficients alpha, beta, delta in float64. Every variant's closed-form dx has
    this shape once its row coefficients are known."""
    N, C, _ = x.shape
    if dx is None:
        dx = np.empty_like(x)
    rows, grads, out = _rows(x), _rows(dy), _rows(dx)
    R = N * C
    center, alpha = center.reshape(R), alpha.reshape(R)
    beta, delta = beta.reshape(R), delta.reshape(R)
    for r in prange(R):
        c = r % C if w.size > 0 else 0
        _combine_row(grads, rows, out, r, c, center[r], alpha[r], beta[r], delta[r], w)
    return dx


@njit(parallel=True, cache=True, fastmath=FLAGS)
def normalize_runs(x, k, eps, centered, gamma, beta, w, b, y, mean, rstd):
    """Per-sample statistics fused with their output, per run of k consecutive rows (one
    contiguous block of m = k·S values, visited while it is in cache): the run's mean and
    M2 = Σ (x - mean)² (float64, two passes), then the center c = mean and σ² = M2/m, or, not
    `centered`, c = 0 and σ² = ⟨x²⟩ = M2/m + mean² (RMSNorm, FRN); ρ = 1/sqrt(σ² + eps) and
    y = (x - c) · ρ · gamma[c] · w[c, s] + beta[c] + b[c, s].
    x, y (N, C, S); gamma, beta (C,) in x's dtype; w, b (C, S) or (0, 0); the outputs mean
    (the center c) and rstd (ρ), (N, C/k), in float64. Run j is rows j·k .. j·k + k - 1."""
    N, C, S = x.shape
    runs = N * (C // k)
    rows, out = _rows(x), _rows(y)
    mean, rstd = mean.reshape(runs), rstd.reshape(runs)
    cast = x.dtype.type
    for j in prange(runs):
        lo = j * k
        first = lo % C
        mean_run, m2 = _moments(rows, lo, lo + k)
        mu = mean_run * centered  # branch-free: c = 0 and σ² = ⟨x²⟩ when not centered
        rho = 1.0 / np.sqrt(m2 / (k * S) + (mean_run - mu) ** 2 + eps)
        mean[j], rstd[j] = mu, rho
        for t in range(k):
            c = first + t
            _normalize_row(rows, out, lo + t, c, cast(mu), cast(rho * gamma[c]), beta[c], w, b)
    return y


@njit(parallel=True, cache=True, fastmath=FLAGS)
def combine_runs(dy, x, k, centered, mean, rstd, gamma, w, dx, sum_dy, sum_dyx):
    """The backward of `normalize_runs` (its statistics differentiated), per run of k rows read
    twice while in cache. Pass 1, per row: sum_dy = Σ_s dy·w, sum_dyx = Σ_s dy·w·(x - c)
    (float64, w = 1 when empty; without gamma: the caller's dγ, dβ). Then with g = gamma[c]·dy·w
    and m = k·S, ⟨g⟩ and ⟨g·(x - c)⟩ over the run give `formulas.dx_terms`' beta and delta;
    pass 2: dx = ρ·g + beta·(x - c) + delta, the coefficients in float64.
    dy, x, dx (N, C, S); mean (the center c), rstd (N, C/k) float64; gamma (C,); w (C, S) or
    (0, 0); the outputs sum_dy, sum_dyx (N, C) float64."""
    N, C, S = x.shape
    runs = N * (C // k)
    m = k * S
    rows, grads, out = _rows(x), _rows(dy), _rows(dx)
    mean, rstd = mean.reshape(runs), rstd.reshape(runs)
    sum_dy, sum_dyx = sum_dy.reshape(N * C), sum_dyx.reshape(N * C)
    cast = x.dtype.type
    for j in prange(runs):
        lo = j * k
        first = lo % C
        center, rho = cast(mean[j]), rstd[j]
        total = 0.0
        total_x = 0.0
        for t in range(k):
            c = first + t
            a, b = _row_grad_sums(grads, rows, lo + t, c, center, w)
            sum_dy[lo + t], sum_dyx[lo + t] = a, b
            total += gamma[c] * a
            total_x += gamma[c] * b
        beta, delta = dx_terms(rho, total / m, total_x / m, centered, True)
        for t in range(k):
            c = first + t
            _combine_row(grads, rows, out, lo + t, c, center, rho * gamma[c], beta, delta, w)
    return dx


@njit(cache=True, error_model="numpy")
def statistics(n, *args):
    """`formulas.finalize_statistic` for the n statistics, one after another, in one call
    (at most a few thousand, each a loop over its rows' moments: no threads)."""
    finalize_statistic(0, n, *args)


@njit(cache=True, error_model="numpy")
def coefficients(n, *args):
    """`formulas.finalize_gradient` for i < n = max(statistics, channels), in one call."""
    finalize_gradient(0, n, *args)


@njit(cache=True, error_model="numpy")
def mixture_coefficients(
    n, mean_p, m2_p, chunk, S, N, C, has_ln, has_bn, bn_fixed, run_mean, run_var, momentum,
    has_running, gate, has_gate, size, has_size, eps, switchable, mean_logits, var_logits, mix,
    stats, w_in, w_ln, w_bn, gamma, has_gamma, beta, has_beta, out,
):  # fmt: skip
    """`mixtures.mixture_statistics` for the n slots, then each row's center, scale and shift
    into out (3, N·C) by `mixtures.mixture_rows`, in one call."""
    mixture_statistics(
        0, n, 1, mean_p, m2_p, chunk, S, N, C, has_ln, has_bn, bn_fixed, run_mean, run_var,
        momentum, has_running, gate, has_gate, size, has_size, eps, switchable, mean_logits,
        var_logits, mix, stats,
    )  # fmt: skip
    mixture_rows(
        0, N * C, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
        has_bn, gamma, has_gamma, beta, has_beta, out,
    )  # fmt: skip


@njit(cache=True, error_model="numpy")
def mixture_gradient_coefficients(
    n, g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
    has_bn, bn_fixed, gamma, has_gamma, sums, dgamma, dbeta, dgate, dlogits, out,
):  # fmt: skip
    """`mixtures.mixture_sums` for the n slots (switchable: then `logit_grads` into dlogits),
    then each row's alpha, beta, delta into out (3, N·C) by `mixtures.mixture_row_gradients`,
    in one call."""
    da = mixture_sums(
        0, n, 1, g_p, gx_p, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn,
        has_ln, has_bn, gamma, has_gamma, sums, dgamma, dbeta, dgate,
    )  # fmt: skip
    if switchable:
        logit_grads(da[0], da[1], da[2], da[3], da[4], da[5], mix, dlogits)
    mixture_row_gradients(
        0, N * C, g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln,
        w_bn, has_ln, has_bn, bn_fixed, gamma, has_gamma, sums, out,
    )  # fmt: skip


@njit(parallel=True, cache=True, fastmath=FLAGS)
def column_grad_sums(dy, x, center, scale):
    """Per position (c, s), in float64: Σ_n dy and Σ_n dy·x̂ with x̂ = (x - center[r])·scale[r]
    (the gradients of an elementwise affine b[c, s] and w[c, s]). Parallel over blocks of
    positions, so a single channel (LayerNorm's (N, 1, S) view) still uses every thread."""
    N, C, S = x.shape
    db = np.empty((C, S))
    dw = np.empty((C, S))
    blocks = (S + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for k in prange(C * blocks):
        c = k // blocks
        lo = (k % blocks) * COLUMN_BLOCK
        hi = min(lo + COLUMN_BLOCK, S)
        acc_b = np.zeros(hi - lo)  # this task's block, kept in L1 across the N rows
        acc_w = np.zeros(hi - lo)
        for n in range(N):
            m, a = center[n, c], scale[n, c]
            grow, row = dy[n, c, lo:hi], x[n, c, lo:hi]
            for i in range(hi - lo):
                g = np.float64(grow[i])
                acc_b[i] += g
                acc_w[i] += g * ((row[i] - m) * a)
        db[c, lo:hi] = acc_b
        dw[c, lo:hi] = acc_w
    return db, dw


COLUMNS = 64  # columns per task in the column kernels: a row's block is four cache lines


@njit(parallel=True, cache=True, fastmath=FLAGS)
def column_moments(x):
    """x (N, C) -> per column, in float64: mean (C,) and M2 = Σ_n (x - mean)² (C,). Two passes
    over each block of COLUMNS columns (parallel over the blocks), its sums kept in L1."""
    N, C = x.shape
    mean, m2 = np.empty(C), np.empty(C)
    for k in prange((C + COLUMNS - 1) // COLUMNS):
        lo = k * COLUMNS
        hi = min(lo + COLUMNS, C)
        acc = np.zeros(hi - lo)
        for n in range(N):
            row = x[n, lo:hi]
            for i in range(hi - lo):
                acc[i] += row[i]
        mu = acc / N
        acc[:] = 0
        for n in range(N):
            row = x[n, lo:hi]
            for i in range(hi - lo):
                d = row[i] - mu[i]
                acc[i] += d * d
        mean[lo:hi], m2[lo:hi] = mu, acc
    return mean, m2


@njit(parallel=True, cache=True, fastmath=FLAGS)
def normalize_columns(x, center, scale, shift, y):
    """y = (x - center[c])·scale[c] + shift[c] over (N, C) arrays, parallel over rows; the
    column arrays (C,) in x's dtype."""
    N, C = x.shape
    for n in prange(N):
        row, out = x[n], y[n]
        for c in range(C):
            out[c] = (row[c] - center[c]) * scale[c] + shift[c]
    return y


@njit(parallel=True, cache=True, fastmath=FLAGS)
def column_sums(dy, x, center):
    """Per column of (N, C) arrays, in float64: Σ_n dy and Σ_n dy·(x - center[c])."""
    N, C = x.shape
    sum_dy, sum_dyx = np.empty(C), np.empty(C)
    for k in prange((C + COLUMNS - 1) // COLUMNS):
        lo = k * COLUMNS
        hi = min(lo + COLUMNS, C)
        acc, acc_x, mid = np.zeros(hi - lo), np.zeros(hi - lo), center[lo:hi]
        for n in range(N):
            grow, row = dy[n, lo:hi], x[n, lo:hi]
            for i in range(hi - lo):
                g = np.float64(grow[i])
                acc[i] += g
                acc_x[i] += g * (row[i] - mid[i])
        sum_dy[lo:hi], sum_dyx[lo:hi] = acc, acc_x
    return sum_dy, sum_dyx


@njit(parallel=True, cache=True, fastmath=FLAGS)
def combine_columns(dy, x, center, alpha, beta, delta, dx):
    """dx = alpha[c]·dy + beta[c]·(x - center[c]) + delta[c] over (N, C) arrays, parallel over
    rows; `center` in x's dtype, the coefficients in float64 (as in `combine`)."""
    N, C = x.shape
    for n in prange(N):
        grow, row, out = dy[n], x[n], dx[n]
        for c in range(C):
            out[c] = alpha[c] * grow[c] + beta[c] * (row[c] - center[c]) + delta[c]
    return dx


@njit(cache=True)
def _valid(k, s, p, size, count):
    """The range [lo, hi) of output positions o whose input o·s + k - p lies in [0, size)."""
    lo = max(0, (p - k + s - 1) // s)
    hi = min(count, (size - 1 + p - k) // s + 1)
    return lo, max(lo, hi)


@njit(nogil=True, cache=True)
def im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """cols[n, c, i, j, oh, ow] = x[n, c, oh·sh + i - ph, ow·sw + j - pw] (0 outside x): each
    image's columns for its own GEMM; `cols` is (N, C, kh, kw, OH, OW). Serial and without the
    GIL (the convolution gives each thread a range of the batch). Each output row is three
    branch-free loops: zeros left of the input, the copy, zeros right of it."""
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    w_lo, w_hi = _valid(j, sw, pw, W, OW)
                    for oh in range(OH):
                        h = oh * sh + i - ph
                        lo, hi = (w_lo, w_hi) if 0 <= h < H else (OW, OW)
                        dst = cols[n, c, i, j, oh]
                        # the input row from its first used value on, every sw-th value
                        src = x[n, c, min(max(h, 0), H - 1), lo * sw + j - pw :: sw]
                        for ow in range(lo):
                            dst[ow] = 0
                        for t in range(hi - lo):  # indices known >= 0: no wraparound check
                            dst[lo + t] = src[t]
                        for ow in range(hi, OW):
                            dst[ow] = 0
    return cols


@njit(nogil=True, cache=True)
def col2im(cols, sh, sw, ph, pw, dx):
    """The adjoint of `im2col`: dx[n, c, h, w] = Σ cols[n, c, i, j, oh, ow] over the (i, j, oh,
    ow) with oh·sh + i - ph = h and ow·sw + j - pw = w; `dx` (N, C, H, W) is overwritten.
    Serial and without the GIL, reading cols sequentially."""
    N, C, kh, kw, OH, OW = cols.shape
    H, W = dx.shape[2:]
    for n in range(N):
        for c in range(C):
            plane = dx[n, c]
            for h in range(H):
                for w in range(W):
                    plane[h, w] = 0
            for i in range(kh):
                h_lo, h_hi = _valid(i, sh, ph, H, OH)
                for j in range(kw):
                    w_lo, w_hi = _valid(j, sw, pw, W, OW)
                    for oh in range(h_lo, h_hi):
                        src = cols[n, c, i, j, oh, w_lo:]
                        dst = plane[oh * sh + i - ph, w_lo * sw + j - pw :: sw]
                        for t in range(w_hi - w_lo):  # indices known >= 0: no wraparound check
                            dst[t] += src[t]
    return dx


@njit(nogil=True, cache=True)
def shifted_rows(xpad, C, plane, Wp, cols):
    """cols[n, c, i, j, q] = xpad[(n·C + c)·plane + i·Wp + j + q]: for a stride-1 convolution
    over zero-padded planes of `plane` = Hp·Wp values, flat in `xpad`, row (c, i, j) of image
    n's columns is one contiguous run (see `tinynorm.ops.conv`); `cols` is (N, C, kh, kw, Q).
    Serial and without the GIL."""
    N, _, kh, kw, Q = cols.shape
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    start = (n * C + c) * plane + i * Wp + j
                    src, dst = xpad[start : start + Q], cols[n, c, i, j]
                    for q in range(Q):  # indices known >= 0: no wraparound check, SIMD
                        dst[q] = src[q]
    return cols


@njit(nogil=True, cache=True)
def add_shifted_rows(dcols, C, plane, Wp, dxpad):
    """The adjoint of `shifted_rows`: dxpad (overwritten) = Σ over (n, c, i, j, q) of dcols[n,
    c, i, j, q] added at (n·C + c)·plane + i·Wp + j + q. Serial and without the GIL."""
    N, _, kh, kw, Q = dcols.shape
    dxpad[:] = 0
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    start = (n * C + c) * plane + i * Wp + j
                    dst, src = dxpad[start : start + Q], dcols[n, c, i, j]
                    for q in range(Q):
                        dst[q] += src[q]
    return dxpad


def max_pool(x, kh, kw, sh, sw, ph, pw, y, arg):
    """y[n, c, oh, ow] = max of the window at (oh·sh - ph, ow·sw - pw) (positions outside x
    excluded, as if padded with -inf; a NaN is the maximum); arg = the window offset i·kw + j
    of the first maximum. Runs `max_pool_kernels`' forward for this window geometry."""
    return max_pool_kernels(kh, kw, sh, sw, ph, pw)[0](x, y, arg)


def max_pool_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx):
    """dx (overwritten) gets each dy[n, c, oh, ow] at its window's argmax; overlapping windows
    add up. Runs `max_pool_kernels`' backward for this window geometry."""
    return max_pool_kernels(kh, kw, sh, sw, ph, pw)[1](dy, arg, dx)


@functools.cache
def max_pool_kernels(kh, kw, sh, sw, ph, pw):
    """Max pooling's forward and backward compiled for one window geometry: with the window's
    size, stride and padding constants, the compiler unrolls the window loops (3-5× faster
    than the same loops over run-time sizes). Parallel over the (n, c) planes. Each geometry
    compiles once, then comes from Numba's cache (keyed by these values too)."""

    @njit(parallel=True, cache=True)
    def forward(x, y, arg):
        N, C, H, W = x.shape
        OH, OW = y.shape[2:]
        for p in prange(N * C):
            plane, out, where = x[p // C, p % C], y[p // C, p % C], arg[p // C, p % C]
            for oh in range(OH):
                for ow in range(OW):
                    best, at = plane[0, 0], -1
                    for i in range(kh):
                        for j in range(kw):
                            h, w = oh * sh + i - ph, ow * sw + j - pw
                            if 0 <= h < H and 0 <= w < W:
                                v = plane[h, w]
                                # the first in-bounds value starts; a NaN wins and stays
                                if at < 0 or (best == best and not v <= best):
                                    best, at = v, i * kw + j
                    out[oh, ow] = best
                    where[oh, ow] = at
        return y

    @njit(parallel=True, cache=True)
    def backward(dy, arg, dx):
        N, C, OH, OW = dy.shape
        for p in prange(N * C):
            plane, grad, where = dx[p // C, p % C], dy[p // C, p % C], arg[p // C, p % C]
            plane[:] = 0
            for oh in range(OH):
                for ow in range(OW):
                    a = where[oh, ow]
                    plane[oh * sh + a // kw - ph, ow * sw + a % kw - pw] += grad[oh, ow]
        return dx

    return forward, backward


@njit(parallel=True, cache=True)
def relu(x, y):
    """y = max(x, 0) over flat arrays (a NaN stays NaN, as in NumPy); parallel."""
    for k in prange(x.size):
        v = x[k]
        y[k] = v if not v <= 0 else 0
    return y


@njit(parallel=True, cache=True)
def relu_backward(dy, y, dx):
    """dx = dy where y > 0, else 0, over flat arrays; parallel."""
    for k in prange(dy.size):
        dx[k] = dy[k] if y[k] > 0 else 0
    return dx


@njit(parallel=True, cache=True)
def tlu(x, tau, z):
    """z = max(x, τ[c]) for x (N, C, S) and a threshold per channel τ (C,); parallel over
    rows (FRN's thresholded linear unit)."""
    N, C, S = x.shape
    for r in prange(N * C):
        n, c = r // C, r % C
        t = tau[c]
        for s in range(S):
            v = x[n, c, s]
            z[n, c, s] = t if v < t else v
    return z


@njit(parallel=True, cache=True)
def tlu_backward(dz, z, tau, dx):
    """dx = dz where z = `tlu`(x) > τ[c] (x passed), else 0; returns each row's share of dτ,
    Σ_s dz where z ≤ τ[c], (N, C) in float64. Parallel over rows."""
    N, C, S = dz.shape
    dtau = np.empty((N, C))
    for r in prange(N * C):
        n, c = r // C, r % C
        t = tau[c]
        acc = 0.0
        for s in range(S):
            if z[n, c, s] > t:
                dx[n, c, s] = dz[n, c, s]
            else:
                dx[n, c, s] = 0
                acc += np.float64(dz[n, c, s])
        dtau[n, c] = acc
    return dtau


@njit(parallel=True, cache=True)
def copy(src, dst):
    """dst = src for flat arrays; parallel (`copy_bandwidth` times it)."""
    for k in prange(src.size):
        dst[k] = src[k]
    return dst


TILE = 32  # transpose: a 32 × 32 block of float32 is 4 KiB, so its rows and columns stay in L1


@njit(parallel=True, cache=True)
def transpose(x, out):
    """out = xᵀ for a 2-d x, copied in TILE × TILE blocks (parallel over blocks): a plain
    transposed copy strides through memory on every write, a block reads and writes whole
    cache lines."""
    R, C = x.shape
    tiles_c = (C + TILE - 1) // TILE
    for t in prange(((R + TILE - 1) // TILE) * tiles_c):
        r0, c0 = (t // tiles_c) * TILE, (t % tiles_c) * TILE
        for c in range(c0, min(c0 + TILE, C)):
            for r in range(r0, min(r0 + TILE, R)):
                out[c, r] = x[r, c]
    return out
