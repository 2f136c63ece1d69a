"""CUDA kernels: the same functions as `cpu.py` (the norm family, im2col/col2im, max pooling),
on CuPy arrays. Not here: the column kernels and ReLU, which `kernels` composes from CuPy's
array operations on a GPU, and the shifted rows, the CPU's stride-1 convolution layout.

`w`/`b` are None when there is no elementwise affine (a 1×1 placeholder and a flag reach the
kernel); the row arrays (N, C) must already be contiguous and in the data's dtype, except the
coefficients of `combine` (alpha, beta, delta), which are float64 (see `kernels`).

Arrays cross zero-copy through `__cuda_array_interface__`; outputs are allocated with the
array module of the input (CuPy on a GPU; NumPy under Numba's CUDA simulator in the tests).

Every launch goes through `_launch`, which launches nothing for a grid without blocks (CUDA
refuses one; the simulator would run nothing silently). Outputs are allocated C-contiguous.

Reductions are two-stage. Stage 1: a block of THREADS threads reduces one chunk of CHUNK values
of one row in shared memory, so a few long rows still fill the GPU with (rows × chunks) blocks
(rows on the grid's x axis, which allows 2³¹ - 1 blocks; chunks on y, at most MAX_GRID_Y: a
longer row gets longer chunks, `_chunking`). Stage 2 folds the per-chunk partials of each row
on the (rows, chunks) arrays, when a row has more than one: plain sums for gradient sums,
`formulas.pool_moments` (Chan's formula) for the moments; or, in a whole normalization,
`_statistics` / `_coefficients` (a thread per statistic) pool a statistic's rows and chunks
at once and write each row's coefficients, so that a norm layer is three launches each way
(`moment_parts`, `statistics`, `normalize`; `grad_sum_parts`, `coefficients`, `combine`,
whose center may be the per-statistic (P, G) array: `_center`). The row kernels' elementwise passes
(`_normalize`, `_combine`) run on the same 2-d grid, a block per (row, span of THREADS values),
looping when the spans outnumber MAX_GRID_Y: no division per value. The mixtures take the
same shape: stage 1, `_mixture_statistics` (a thread per row, sample and channel) or
`_mixture_sums` (one block: it sums switchable norm's weight gradients over every row), and
`_mixture_normalize` / `_mixture_combine`, whose thread 0 computes the block's row
coefficients (`mixtures.py`). The other elementwise
kernels use one thread per value, consecutive threads on consecutive addresses (coalesced).
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda, float64

from . import get_array_module  # CuPy on a GPU, NumPy under the simulator
from .formulas import finalize_gradient, finalize_statistic, pool_moments
from .mixtures import (
    logit_grads,
    mixture_row_gradients,
    mixture_rows,
    mixture_statistics,
    mixture_sums,
)

# threads per block (a power of two); the simulator runs each thread in Python (a few ms a
# block-thread), so it gets fewer: 16 keeps the CI's simulator tests within its time
THREADS = 16 if config.ENABLE_CUDASIM else 128
CHUNK = 8 * THREADS  # values of one row reduced by one block
MAX_GRID_Y = 65_535  # blocks along a grid's y (and z) axis: CUDA's limit


@cuda.jit(device=True)
def _block_sum(shared, value):
    """The sum of `value` over the block's threads (tree reduction in shared memory)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            shared[t] += shared[t + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(cache=True)
def _chunk_moments(x, S, chunk, mean_out, m2_out):
    """Block (row r, chunk j): mean and M2 of x[r, j·chunk : (j+1)·chunk], two passes."""
    r, j = cuda.blockIdx.x, cuda.blockIdx.y
    shared = cuda.shared.array(THREADS, float64)
    lo = j * chunk
    hi = min(lo + chunk, S)
    total = 0.0
    for i in range(lo + cuda.threadIdx.x, hi, THREADS):
        total += float64(x[r, i])
    m = _block_sum(shared, total) / (hi - lo)
    sq = 0.0
    for i in range(lo + cuda.threadIdx.x, hi, THREADS):
        d = x[r, i] - m
        sq += d * d
    sq = _block_sum(shared, sq)
    if cuda.threadIdx.x == 0:
        mean_out[r, j] = m
        m2_out[r, j] = sq


@cuda.jit(device=True)
def _center(center, r, C):
    """The center of row r = (n, c) from center (P, G): P = N rows of G runs of C/G channels,
    or P = 1, one for every sample (the batch's statistics)."""
    n = r // C if center.shape[0] > 1 else 0
    return center[n, (r % C) // (C // center.shape[1])]


@cuda.jit(cache=True)
def _chunk_grad_sums(dy, x, center, w, has_w, C, S, chunk, g_out, gx_out):
    """Block (row r, chunk j): Σ dy·w and Σ dy·w·(x - c) over the chunk (c: `_center`)."""
    r, j = cuda.blockIdx.x, cuda.blockIdx.y
    shared = cuda.shared.array(THREADS, float64)
    lo = j * chunk
    hi = min(lo + chunk, S)
    m = _center(center, r, C)
    a = 0.0
    b = 0.0
    for i in range(lo + cuda.threadIdx.x, hi, THREADS):
        g = float64(dy[r, i])
        if has_w:
            g *= w[r % C, i]
        a += g
        b += g * (x[r, i] - m)
    a = _block_sum(shared, a)
    b = _block_sum(shared, b)
    if cuda.threadIdx.x == 0:
        g_out[r, j] = a
        gx_out[r, j] = b


@cuda.jit(cache=True)
def _normalize(x, center, scale, shift, w, b, has_w, C, S, y):
    """Block (row r, span j): y = (x - center[r]) · scale[r] · w[c, s] + shift[r] + b[c, s]
    for s = j·THREADS + thread, stepping by the grid's spans."""
    r = cuda.blockIdx.x
    m, a, d, c = center[r], scale[r], shift[r], r % C
    for s in range(cuda.blockIdx.y * THREADS + cuda.threadIdx.x, S, cuda.gridDim.y * THREADS):
        v = (x[r, s] - m) * a
        if has_w:
            y[r, s] = v * w[c, s] + (d + b[c, s])
        else:
            y[r, s] = v + d


@cuda.jit(cache=True)
def _combine(dy, x, center, alpha, beta, delta, w, has_w, C, S, dx):
    """Block (row r, span j): dx = alpha[r] · dy · w[c, s] + beta[r] · (x - c) + delta[r]
    (c: `_center`), computed in float64 (alpha, beta, delta are) and stored in dx's dtype."""
    r = cuda.blockIdx.x
    m, a, bt, d, c = _center(center, r, C), alpha[r], beta[r], delta[r], r % C
    for s in range(cuda.blockIdx.y * THREADS + cuda.threadIdx.x, S, cuda.gridDim.y * THREADS):
        g = dy[r, s]
        if has_w:
            g *= w[c, s]
        dx[r, s] = a * g + bt * (x[r, s] - m) + d


@cuda.jit(cache=True)
def _statistics(
    n, mean_p, m2_p, chunk, S, C, k, across, centered, scaled, eps, gamma, beta, has_gamma,
    has_beta, run_mean, run_var, momentum, has_run_mean, has_run_var, renorm, step, warmup,
    r_steps, d_steps, rmax, dmax, corrections, stat_mean, stat_rstd, center, scale, shift,
):  # fmt: skip
    """Thread i < n: `formulas.finalize_statistic` for statistic i (a kernel takes no *args)."""
    i = cuda.grid(1)
    if i < n:
        finalize_statistic(
            i, i + 1, mean_p, m2_p, chunk, S, C, k, across, centered, scaled, eps, gamma, beta,
            has_gamma, has_beta, run_mean, run_var, momentum, has_run_mean, has_run_var, renorm,
            step, warmup, r_steps, d_steps, rmax, dmax, corrections, stat_mean, stat_rstd,
            center, scale, shift,
        )  # fmt: skip


@cuda.jit(cache=True)
def _coefficients(
    n, g_p, gx_p, C, k, across, centered, scaled, rstd, m, gamma, has_gamma, renorm,
    corrections, alpha, beta, delta, sum_gx, dgamma, dbeta,
):  # fmt: skip
    """Thread i < n: `formulas.finalize_gradient` for statistic and channel i."""
    i = cuda.grid(1)
    if i < n:
        finalize_gradient(
            i, i + 1, g_p, gx_p, C, k, across, centered, scaled, rstd, m, gamma, has_gamma,
            renorm, corrections, alpha, beta, delta, sum_gx, dgamma, dbeta,
        )  # fmt: skip


@cuda.jit(cache=True)
def _column_grad_sums(dy, x, center, scale, N, C, S, db, dw):
    """Thread per position p = (c, s): Σ_n dy and Σ_n dy·x̂ (reads are coalesced over s)."""
    p = cuda.grid(1)
    if p >= C * S:
        return
    c, s = p // S, p % S
    a = 0.0
    b = 0.0
    for n in range(N):
        r = n * C + c
        g = float64(dy[r, s])
        a += g
        b += g * ((x[r, s] - center[r]) * scale[r])
    db[c, s] = a
    dw[c, s] = b


@cuda.jit(cache=True)
def _tlu(x, tau, C, S, z):
    """Block (row r, span j): z = max(x, τ[c]), on the grid of `_normalize`."""
    r = cuda.blockIdx.x
    t = tau[r % C]
    for s in range(cuda.blockIdx.y * THREADS + cuda.threadIdx.x, S, cuda.gridDim.y * THREADS):
        v = x[r, s]
        z[r, s] = t if v < t else v


@cuda.jit(cache=True)
def _tlu_backward(dz, z, tau, N, C, S, dx, dtau):
    """Block per channel c: dx = dz where z > τ[c], else 0, and dτ[c] = Σ_(n, s) dz where
    z ≤ τ[c] (float64), in one pass without atomics (C blocks: few channels use few SMs)."""
    c = cuda.blockIdx.x
    shared = cuda.shared.array(THREADS, float64)
    t = tau[c]
    acc = 0.0
    for n in range(N):
        r = n * C + c
        for s in range(cuda.threadIdx.x, S, THREADS):
            if z[r, s] > t:
                dx[r, s] = dz[r, s]
            else:
                dx[r, s] = 0
                acc += float64(dz[r, s])
    total = _block_sum(shared, acc)
    if cuda.threadIdx.x == 0:
        dtau[c] = total


@cuda.jit(cache=True)
def _mixture_statistics(
    n, mean_p, m2_p, chunk, S, N, C, has_ln, has_bn, bn_fixed, run_mean, run_var, momentum,
    has_running, gate, has_gate, size, has_size, eps, switchable, mean_logits, var_logits, mix,
    stats,
):  # fmt: skip
    """Thread i < n: `mixtures.mixture_statistics` for slot i (a row, a sample, a channel)."""
    i = cuda.grid(1)
    if i < n:
        mixture_statistics(
            i, i + 1, 1, mean_p, m2_p, chunk, S, N, C, has_ln, has_bn, bn_fixed, run_mean,
            run_var, momentum, has_running, gate, has_gate, size, has_size, eps, switchable,
            mean_logits, var_logits, mix, stats,
        )  # fmt: skip


@cuda.jit(cache=True)
def _mixture_normalize(
    x, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln, has_bn,
    gamma, has_gamma, beta, has_beta, y,
):  # fmt: skip
    """Block (row r, span j): y = (x - center)·scale + shift with the row's coefficients from
    `mixtures.mixture_rows` (thread 0 computes them for the block, in shared memory)."""
    r = cuda.blockIdx.x
    row = cuda.shared.array((3, 1), float64)
    if cuda.threadIdx.x == 0:
        mixture_rows(
            r, r + 1, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
            has_bn, gamma, has_gamma, beta, has_beta, row,
        )  # fmt: skip
    cuda.syncthreads()
    m, a, d = row[0, 0], row[1, 0], row[2, 0]
    for s in range(cuda.blockIdx.y * THREADS + cuda.threadIdx.x, S, cuda.gridDim.y * THREADS):
        y[r, s] = (x[r, s] - m) * a + d


@cuda.jit(cache=True)
def _mixture_sums(
    n, g_p, gx_p, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
    has_bn, gamma, has_gamma, sums, dgamma, dbeta, dgate, dlogits,
):  # fmt: skip
    """One block: thread t takes the slots t, t + THREADS, … of `mixtures.mixture_sums`; when
    switchable, the block sums the six dL/da, dL/db shares and thread 0 writes dλ, dλ' (no
    atomics, no second launch)."""
    shared = cuda.shared.array(THREADS, float64)
    da0, da1, da2, db0, db1, db2 = mixture_sums(
        cuda.threadIdx.x, n, THREADS, g_p, gx_p, N, C, stats, eps, switchable, mix, gate,
        has_gate, w_in, w_ln, w_bn, has_ln, has_bn, gamma, has_gamma, sums, dgamma, dbeta, dgate,
    )  # fmt: skip
    if switchable:
        da0 = _block_sum(shared, da0)
        da1 = _block_sum(shared, da1)
        da2 = _block_sum(shared, da2)
        db0 = _block_sum(shared, db0)
        db1 = _block_sum(shared, db1)
        db2 = _block_sum(shared, db2)
        if cuda.threadIdx.x == 0:
            logit_grads(da0, da1, da2, db0, db1, db2, mix, dlogits)


@cuda.jit(cache=True)
def _mixture_combine(
    dy, x, g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn,
    has_ln, has_bn, bn_fixed, gamma, has_gamma, sums, dx,
):  # fmt: skip
    """Block (row r, span j): dx = alpha·dy + beta·(x - μ_in) + delta with the row's
    coefficients from `mixtures.mixture_row_gradients` (thread 0's, in shared memory)."""
    r = cuda.blockIdx.x
    row = cuda.shared.array((3, 1), float64)
    if cuda.threadIdx.x == 0:
        mixture_row_gradients(
            r, r + 1, g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln,
            w_bn, has_ln, has_bn, bn_fixed, gamma, has_gamma, sums, row,
        )  # fmt: skip
    cuda.syncthreads()
    a, bt, d, m = row[0, 0], row[1, 0], row[2, 0], stats[0, r]
    for s in range(cuda.blockIdx.y * THREADS + cuda.threadIdx.x, S, cuda.gridDim.y * THREADS):
        dx[r, s] = a * dy[r, s] + bt * (x[r, s] - m) + d


def _rows(x):
    N, C, S = x.shape
    return x.reshape(N * C, S)


def _grid(size: int) -> tuple[int]:
    """A 1-d grid of one thread per value."""
    return (math.ceil(size / THREADS),)


def _spans(rows: int, S: int) -> tuple[int, int]:
    """The 2-d grid of the row kernels' elementwise passes: (rows, spans of THREADS values)."""
    return rows, min(math.ceil(S / THREADS), MAX_GRID_Y)


def _chunking(S: int, chunk: int) -> tuple[int, int]:
    """(chunk, chunks) for reducing rows of S values, a block per chunk: `chunk` values a
    block, grown (a whole number of THREADS) until the chunks fit on grid y."""
    chunks = math.ceil(S / chunk)
    if chunks > MAX_GRID_Y:
        chunk = -(-S // (MAX_GRID_Y * THREADS)) * THREADS
        chunks = math.ceil(S / chunk)
    return chunk, chunks


def _launch(kernel, grid: tuple[int, ...], *args) -> None:
    """kernel[grid, THREADS](*args), the one place a kernel is launched; nothing for a grid
    without blocks."""
    if 0 not in grid:
        kernel[grid, THREADS](*args)


def _table(w, x):
    """An affine table (C, S), or a 1×1 placeholder when there is none (never read: an
    allocation, no launch), and the flag."""
    if w is None:
        return get_array_module(x).empty((1, 1), x.dtype), False
    return w, True


def moment_parts(x, chunk: int = CHUNK):
    """x (N, C, S) -> ((mean, M2) of each row's chunks, (N·C, J) float64 each, chunk): stage 1
    of `row_moments`, which `statistics` pools itself."""
    xp = get_array_module(x)
    N, C, S = x.shape
    chunk, chunks = _chunking(S, chunk)
    mean = xp.empty((N * C, chunks))
    m2 = xp.empty((N * C, chunks))
    _launch(_chunk_moments, (N * C, chunks), _rows(x), S, chunk, mean, m2)
    return (mean, m2), chunk


def row_moments(x, chunk: int = CHUNK):
    """x (N, C, S) -> mean (N, C), m2 (N, C) in float64 (see cpu.row_moments; S = 0: mean
    NaN, m2 0)."""
    xp = get_array_module(x)
    N, C, S = x.shape
    if S == 0:
        return xp.full((N, C), np.nan), xp.zeros((N, C))
    (mean, m2), chunk = moment_parts(x, chunk)
    chunks = mean.shape[1]
    if chunks > 1:  # the last chunk may be short: S - (chunks - 1)·chunk values
        counts = xp.full(chunks, float(chunk))
        counts[-1] = S - (chunks - 1) * chunk
        mean, m2, _ = pool_moments(mean, m2, counts, 1)
    return mean.reshape(N, C), m2.reshape(N, C)


def grad_sum_parts(dy, x, center, w=None, chunk: int = CHUNK):
    """Stage 1 of `row_grad_sums`: its two sums over each row's chunks, (N·C, J) float64 each;
    center (N, C), or (P, G) per statistic (see `_center`)."""
    xp = get_array_module(x)
    N, C, S = x.shape
    chunk, chunks = _chunking(S, chunk)
    g = xp.empty((N * C, chunks))
    gx = xp.empty((N * C, chunks))
    _launch(
        _chunk_grad_sums,
        (N * C, chunks),
        *(_rows(dy), _rows(x), center, *_table(w, x), C, S, chunk, g, gx),
    )
    return g, gx


def row_grad_sums(dy, x, center, w=None, chunk: int = CHUNK):
    """Per row, in float64: Σ dy·w, Σ dy·w·(x - center[r]) (see cpu.row_grad_sums)."""
    xp = get_array_module(x)
    N, C, S = x.shape
    if S == 0:
        return xp.zeros((N, C)), xp.zeros((N, C))
    g, gx = grad_sum_parts(dy, x, center, w, chunk)
    if g.shape[1] > 1:
        g, gx = g.sum(axis=1), gx.sum(axis=1)
    return g.reshape(N, C), gx.reshape(N, C)


def statistics(n, *args):
    """`formulas.finalize_statistic` for n statistics, a thread each (see cpu.statistics)."""
    _launch(_statistics, _grid(n), n, *args)


def coefficients(n, *args):
    """`formulas.finalize_gradient` for i < n, a thread each (see cpu.coefficients)."""
    _launch(_coefficients, _grid(n), n, *args)


def normalize(x, center, scale, shift, w=None, b=None):
    """y = (x - center[r]) · scale[r] · w[c, s] + shift[r] + b[c, s] (see cpu.normalize)."""
    N, C, S = x.shape
    y = get_array_module(x).empty(x.shape, x.dtype)  # C-contiguous: `_rows(y)` is a view
    rows = [a.reshape(-1) for a in (center, scale, shift)]
    w, has_w = _table(w, x)
    b = w if b is None else b  # read only where w is
    _launch(_normalize, _spans(N * C, S), _rows(x), *rows, w, b, has_w, C, S, _rows(y))
    return y


def combine(dy, x, center, alpha, beta, delta, w=None):
    """dx = alpha[r] · dy · w[c, s] + beta[r] · (x - c) + delta[r] (see cpu.combine); center
    (N, C) in x's dtype, or (P, G) per statistic (`_center`); alpha, beta, delta in float64."""
    N, C, S = x.shape
    dx = get_array_module(x).empty(x.shape, x.dtype)
    rows = [a.reshape(-1) for a in (alpha, beta, delta)]
    grid = _spans(N * C, S)
    args = (_rows(dy), _rows(x), center, *rows, *_table(w, x), C, S, _rows(dx))
    _launch(_combine, grid, *args)
    return dx


def column_grad_sums(dy, x, center, scale):
    """Per position (c, s), in float64: Σ_n dy and Σ_n dy·x̂ (see cpu.column_grad_sums)."""
    xp = get_array_module(x)
    N, C, S = x.shape
    db = xp.empty((C, S))
    dw = xp.empty((C, S))
    args = (_rows(dy), _rows(x), center.reshape(-1), scale.reshape(-1), N, C, S, db, dw)
    _launch(_column_grad_sums, _grid(C * S), *args)
    return db, dw


def normalize_mixture(x, n, statistics_args, row_args):
    """y of a mixture (see `kernels.normalize_mixture`) in two launches after the moments:
    `_mixture_statistics` (a thread per slot), `_mixture_normalize`. statistics_args: those of
    `mixtures.mixture_statistics` from mean_p on; row_args: (w_in, w_ln, w_bn, gamma,
    has_gamma, beta, has_beta)."""
    N, C, S = x.shape
    _launch(_mixture_statistics, _grid(n), n, *statistics_args)
    (*_, has_ln, has_bn, _, _, _, _, _, gate, has_gate, _, _, eps, switchable, _, _, mix,
     stats) = statistics_args  # fmt: skip
    y = get_array_module(x).empty(x.shape, x.dtype)
    args = (N, C, S, stats, eps, switchable, mix, gate, has_gate, *row_args[:3], has_ln, has_bn,
            *row_args[3:], _rows(y))  # fmt: skip
    _launch(_mixture_normalize, _spans(N * C, S), _rows(x), *args)
    return y


def combine_mixture(dy, x, n, args):
    """dx of a mixture (see `kernels.combine_mixture`) in two launches after the gradient sums:
    `_mixture_sums` (one block), `_mixture_combine`. args: those of
    `cpu.mixture_gradient_coefficients` from g_p to dlogits."""
    N, C, S = x.shape
    (g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
     has_bn, bn_fixed, gamma, has_gamma, sums, dgamma, dbeta, dgate, dlogits) = args  # fmt: skip
    row = (stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln, has_bn)
    outputs = (sums, dgamma, dbeta, dgate, dlogits)
    _launch(_mixture_sums, (1,), n, g_p, gx_p, N, C, *row, gamma, has_gamma, *outputs)
    dx = get_array_module(x).empty(x.shape, x.dtype)
    args = (g_p, gx_p, N, C, S, *row, bn_fixed, gamma, has_gamma, sums, _rows(dx))
    _launch(_mixture_combine, _spans(N * C, S), _rows(dy), _rows(x), *args)
    return dx


def tlu(x, tau):
    """z = max(x, τ[c]) (see cpu.tlu)."""
    N, C, S = x.shape
    z = get_array_module(x).empty(x.shape, x.dtype)
    _launch(_tlu, _spans(N * C, S), _rows(x), tau, C, S, _rows(z))
    return z


def tlu_backward(dz, z, tau):
    """(dx, dτ (C,) float64): dx = dz where z > τ[c], else 0; dτ = Σ_(n, s) dz where z ≤ τ."""
    xp = get_array_module(z)
    N, C, S = z.shape
    dx = xp.empty(z.shape, z.dtype)
    dtau = xp.empty(C)  # no values (N·S = 0): the blocks write 0
    _launch(_tlu_backward, (C,), _rows(dz), _rows(z), tau, N, C, S, _rows(dx), dtau)
    return dx, dtau


@cuda.jit(cache=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """One thread per element of cols (N, C, kh, kw, OH, OW), consecutive threads along ow."""
    t = cuda.grid(1)
    N, C, H, W = x.shape
    if t >= N * C * kh * kw * OH * OW:
        return
    ow = t % OW
    oh = (t // OW) % OH
    j = (t // (OW * OH)) % kw
    i = (t // (OW * OH * kw)) % kh
    c = (t // (OW * OH * kw * kh)) % C
    n = t // (OW * OH * kw * kh * C)
    h, w = oh * sh + i - ph, ow * sw + j - pw
    cols[n, c, i, j, oh, ow] = x[n, c, h, w] if 0 <= h < H and 0 <= w < W else 0


@cuda.jit(cache=True)
def _col2im(cols, sh, sw, ph, pw, dx):
    """One thread per element of dx (N, C, H, W): it gathers the window entries that came from
    its position (no atomics needed)."""
    t = cuda.grid(1)
    N, C, kh, kw, OH, OW = cols.shape
    H, W = dx.shape[2:]
    if t >= N * C * H * W:
        return
    w = t % W
    h = (t // W) % H
    c = (t // (W * H)) % C
    n = t // (W * H * C)
    total = 0.0
    for i in range(kh):
        if (h + ph - i) % sh == 0:
            oh = (h + ph - i) // sh
            if 0 <= oh < OH:
                for j in range(kw):
                    if (w + pw - j) % sw == 0:
                        ow = (w + pw - j) // sw
                        if 0 <= ow < OW:
                            total += cols[n, c, i, j, oh, ow]
    dx[n, c, h, w] = total


def im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols):
    """See cpu.im2col."""
    _launch(_im2col, _grid(cols.size), x, kh, kw, sh, sw, ph, pw, OH, OW, cols)
    return cols


def col2im(cols, sh, sw, ph, pw, dx):
    """See cpu.col2im."""
    _launch(_col2im, _grid(dx.size), cols, sh, sw, ph, pw, dx)
    return dx


@cuda.jit(cache=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, y, arg):
    """One thread per output value (see cpu.max_pool)."""
    t = cuda.grid(1)
    C, H, W = x.shape[1:]
    OH, OW = y.shape[2:]
    if t >= y.size:
        return
    ow, oh, c, n = t % OW, (t // OW) % OH, (t // (OW * OH)) % C, t // (OW * OH * C)
    best = -math.inf
    where = -1
    for i in range(kh):
        h = oh * sh + i - ph
        if 0 <= h < H:
            for j in range(kw):
                w = ow * sw + j - pw
                # the first in-bounds value starts; a NaN wins and stays (PyTorch)
                if 0 <= w < W and (where < 0 or (best == best and not x[n, c, h, w] <= best)):
                    best = x[n, c, h, w]
                    where = i * kw + j
    y[n, c, oh, ow] = best
    arg[n, c, oh, ow] = where


@cuda.jit(cache=True)
def _max_pool_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx):
    """One thread per input value: it gathers dy from the windows whose argmax it is."""
    t = cuda.grid(1)
    C, H, W = dx.shape[1:]
    OH, OW = dy.shape[2:]
    if t >= dx.size:
        return
    w, h, c, n = t % W, (t // W) % H, (t // (W * H)) % C, t // (W * H * C)
    total = 0.0
    for i in range(kh):
        if (h + ph - i) % sh == 0 and 0 <= (h + ph - i) // sh < OH:
            oh = (h + ph - i) // sh
            for j in range(kw):
                if (w + pw - j) % sw == 0 and 0 <= (w + pw - j) // sw < OW:
                    ow = (w + pw - j) // sw
                    if arg[n, c, oh, ow] == i * kw + j:
                        total += dy[n, c, oh, ow]
    dx[n, c, h, w] = total


def max_pool(x, kh, kw, sh, sw, ph, pw, y, arg):
    """See cpu.max_pool."""
    _launch(_max_pool, _grid(y.size), x, kh, kw, sh, sw, ph, pw, y, arg)
    return y


def max_pool_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx):
    """See cpu.max_pool_backward."""
    _launch(_max_pool_backward, _grid(dx.size), dy, arg, kh, kw, sh, sw, ph, pw, dx)
    return dx
