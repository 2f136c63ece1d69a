"""Numba kernels (normalization, im2col, max pooling, transpose): `@njit` for NumPy arrays,
`@cuda.jit` for CuPy arrays.

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

and their twins for an (N, C) array whose channels are columns (batch norm of a linear
layer's output, no transpose), with per-column arguments (C,): `column_moments`,
`normalize_columns`, `column_sums`, `combine_columns`;

and a whole normalization with batch statistics, each statistic over a run of k consecutive
rows of one sample (IN, GN, LN, RMSNorm, FRN) or of every sample (`across_batch`: BN, mean-only
BN); c is the statistic's mean, or 0 when not `centered` (then var = ⟨x²⟩):

    normalize_runs(x, k, eps, gamma, beta, w, b, centered, across_batch, scaled, running)
                                            ρ = 1/sqrt(var + eps), y = (x - c)·ρ·
                                            gamma[c]·w[c, s] + beta[c] + b[c, s]; c, ρ
    combine_runs(dy, x, k, mean, rstd, gamma, w, centered, across_batch, scaled)
                                            its backward: dx, dγ, dβ, Σ g·(x - c)

(`renorm` / `corrections`: batch renorm's r, d, computed and used by the same kernels), and a
mixture of IN, LN and BN statistics (`Mixture`, formulas in `mixtures.py`):

    normalize_mixture(x, eps, gamma, beta, mixture, running)   y and every statistic
    combine_mixture(dy, x, stats, eps, gamma, mixture)        dx, dγ, dβ, dgate, dlogits

On the CPU per-sample statistics run fused, each run while it is in cache; the rest, and every
statistic on a GPU, in three launches: a reduction (row_moments or row_grad_sums; on a GPU per
chunk of a row), `statistics` or `coefficients` (the small step between: a statistic's pooled
moments, ρ, the running estimates and each row's coefficients, or dx's coefficients, dγ and
dβ: `formulas.finalize_statistic` / `finalize_gradient`, one body for both targets), and the
elementwise pass (normalize or combine).

`formulas.py` holds what the kernels, the GPU path and the ops share: the pooling of moments,
the closed-form gradient of a normalization, and the per-statistic steps between a reduction
and an elementwise pass. `is_cupy` and `get_array_module` are the
project's one array-module helper (`tinynorm.backend` re-exports them).

and, for the convolution's GEMMs, `im2col` (each image's window columns) and its adjoint
`col2im` (on the CPU: serial and without the GIL, the convolution runs them in threads); for
max pooling, `max_pool` (values and argmax) and `max_pool_backward`; `relu` and its backward;
`tlu`, FRN's max(x, τ[c]), and its backward;
`transpose`, a blocked 2-d transposed copy (`permute` of a 2-d tensor).

Seeing inside: every CPU kernel launch passes through one wrapper (`_launcher`), which reports it
to an observer while one is set (`observing`: `tinynorm.profiler` times each launch and the
bytes it moves, against `copy_bandwidth`); `inspect` reports what Numba compiled for a call.

Thread safety: Numba's `workqueue` threading layer aborts the process when two Python threads
launch parallel kernels at once (`tbb` and `omp` are thread-safe). Under it, and until the layer
is known (Numba picks it at the first parallel launch), the CPU kernels are launched one at a
time under a lock, so several threads may train at once on any layer.

Row arguments may be anything that broadcasts to (N, C); `w`, `b` are (C, S) tables or None.
Sums come back in float64, arrays in x's dtype. The coefficients of `combine` (alpha, beta,
delta) and of `combine_runs` stay in float64 up to each value's final multiply-add: beta ~ ρ²
(ρ = 1/sqrt(σ² + ε)) falls below float32's smallest normal number once σ passes ~1e19, and in
float32 the gradient would lose its x̂·⟨dx̂·x̂⟩ term.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import types
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, NamedTuple

import numba
import numpy as np

from . import cpu

_LAUNCH = threading.Lock()
_layer: str | None = None  # Numba's threading layer, once known


def _one_at_a_time() -> bool:
    """Whether a CPU kernel launch must hold `_LAUNCH`: under the workqueue layer, and while no
    parallel kernel has run yet (the layer is chosen then)."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # not chosen yet
            return True
    return _layer == "workqueue"


_observer = None  # set by `observing`: called for each CPU kernel launch


def _launcher(name: str, kernel, parallel: bool):
    """`kernel` as the dispatch below launches it: a parallel one under `_LAUNCH` where
    `_one_at_a_time`; each launch reported to the observer while one is set (`observing`)."""

    def run(*args):
        if not (parallel and _one_at_a_time()):
            return kernel(*args)
        with _LAUNCH:
            return kernel(*args)

    @functools.wraps(kernel)
    def launch(*args):
        observer = _observer
        return run(*args) if observer is None else observer(name, run, args)

    return launch


@contextlib.contextmanager
def observing(observer: Callable[[str, Callable, tuple], Any]) -> Iterator[None]:
    """While the block runs, every CPU kernel launch goes through `observer(name, run, args)`,
    which must return `run(*args)` (a profiler times it, `inspect` notes what ran); launches
    from every thread. Blocks do not nest."""
    global _observer
    if _observer is not None:
        raise RuntimeError("kernels.observing: another observer is active")
    _observer = observer
    try:
        yield
    finally:
        _observer = None


PARALLEL = (
    "row_moments",
    "normalize",
    "row_grad_sums",
    "combine",
    "column_grad_sums",
    "column_moments",
    "normalize_columns",
    "column_sums",
    "combine_columns",
    "normalize_runs",
    "combine_runs",
    "max_pool",
    "max_pool_backward",
    "relu",
    "relu_backward",
    "tlu",
    "tlu_backward",
    "transpose",
    "copy",
)
# nogil, on the caller's thread; `statistics`/`coefficients`: a loop over the statistics
SERIAL = (
    "im2col",
    "col2im",
    "shifted_rows",
    "add_shifted_rows",
    "statistics",
    "coefficients",
    "mixture_coefficients",
    "mixture_gradient_coefficients",
)
# the CPU kernels as the dispatch below launches them
_cpu = SimpleNamespace(
    **{name: _launcher(name, getattr(cpu, name), True) for name in PARALLEL},
    **{name: _launcher(name, getattr(cpu, name), False) for name in SERIAL},
)


@functools.cache
def copy_bandwidth(nbytes: int = 1 << 26) -> float:
    """The machine's copy bandwidth in bytes per second (read plus written): the best of five
    parallel copies of `nbytes` by the kernels' threads, measured once per process. The
    profiler's yardstick for a kernel's achieved GB/s."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(6):  # the first also compiles or loads the kernel
        start = time.perf_counter()
        _cpu.copy(src, dst)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def is_cupy(x) -> bool:
    """True for a CuPy array, decided without importing CuPy."""
    return type(x).__module__.startswith("cupy")


def get_array_module(x) -> types.ModuleType:
    """`numpy` or `cupy`, whichever owns `x` (Chainer's `xp` idiom; `tinynorm.backend` too)."""
    if type(x).__module__.startswith("cupy"):  # is_cupy(x), which the GPU-path tests replace
        import cupy

        return cupy
    return np


def _impl(x):
    if is_cupy(x):
        from . import cuda

        return cuda
    return _cpu


def _view(x):
    """x (N, C, S) contiguous, or an error naming the shape."""
    if x.ndim != 3:
        raise ValueError(f"kernels expect an (N, C, S) array, got shape {x.shape}")
    return get_array_module(x).ascontiguousarray(x)


def _filled(shape, a, x, dtype=None):
    """`a` broadcast to `shape` as a contiguous writable array in `dtype` (default x's): `a`
    itself when it is one already, else a fresh array filled with it (one copy or fill; a
    read-only array is copied too: a kernel compiled for writable arrays would compile again)."""
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if (
        getattr(a, "shape", None) == shape
        and a.dtype == dtype
        and a.flags.c_contiguous
        and getattr(a.flags, "writeable", True)  # CuPy's arrays are always writable
    ):
        return a
    out = get_array_module(x).empty(shape, dtype)
    out[...] = a  # as assignment broadcasts: (1, C) fills (C,)
    return out


def _rows(a, x, dtype=None):
    """A per-row argument as an (N, C) array in `dtype` (default x's)."""
    return _filled(x.shape[:2], a, x, dtype)


def _tables(x, *tables):
    """Elementwise affine tables as (C, S) arrays; None stays None on the GPU and becomes an
    empty (0, 0) array for the CPU kernels."""
    empty = None if is_cupy(x) else np.empty((0, 0), x.dtype)
    return [empty if t is None else _filled(x.shape[1:], t, x) for t in tables]


def _affine_tables(x, w, b):
    """`_tables` for (w, b): both or neither; one given alone gets the identity as its partner."""
    if w is None and b is not None:
        w = 1
    if b is None and w is not None:
        b = 0
    return _tables(x, w, b)


def row_moments(x):
    x = _view(x)
    return _impl(x).row_moments(x)


def normalize(x, center, scale, shift, w=None, b=None):
    x = _view(x)
    rows = [_rows(a, x) for a in (center, scale, shift)]
    if is_cupy(x):
        return _impl(x).normalize(x, *rows, *_affine_tables(x, w, b))
    return _cpu.normalize(x, *rows, *_affine_tables(x, w, b), np.empty_like(x))


def row_grad_sums(dy, x, center, w=None):
    x, dy = _view(x), _view(dy)
    return _impl(x).row_grad_sums(dy, x, _rows(center, x), *_tables(x, w))


def combine(dy, x, center, alpha, beta, delta, w=None):
    x, dy = _view(x), _view(dy)
    rows = [_rows(center, x)] + [_rows(a, x, np.float64) for a in (alpha, beta, delta)]
    if is_cupy(x):
        return _impl(x).combine(dy, x, *rows, *_tables(x, w))
    return _cpu.combine(dy, x, *rows, *_tables(x, w), np.empty_like(x))


def column_grad_sums(dy, x, center, scale):
    x, dy = _view(x), _view(dy)
    return _impl(x).column_grad_sums(dy, x, _rows(center, x), _rows(scale, x))


def _columns(x):
    """x as a contiguous (N, C) array, or an error naming the shape."""
    if x.ndim != 2:
        raise ValueError(f"column kernels expect an (N, C) array, got shape {x.shape}")
    return get_array_module(x).ascontiguousarray(x)


def _per_column(a, x, dtype=None):
    """A per-column argument as a (C,) array in `dtype` (default x's)."""
    return _filled(x.shape[1], a, x, dtype)


def column_moments(x):
    """x (N, C) -> per column mean and M2 = Σ_n (x - mean)², (C,) each in float64: batch norm
    of an (N, C) input reads its channels as columns, without a transpose."""
    x = _columns(x)
    if is_cupy(x):
        mean = x.mean(axis=0, dtype=np.float64)
        return mean, ((x - mean) ** 2).sum(axis=0, dtype=np.float64)
    return _cpu.column_moments(x)


def normalize_columns(x, center, scale, shift):
    """y = (x - center[c])·scale[c] + shift[c] for x (N, C); the column arguments broadcast to
    (C,) in x's dtype."""
    x = _columns(x)
    center, scale, shift = (_per_column(a, x) for a in (center, scale, shift))
    if is_cupy(x):
        return (x - center) * scale + shift
    return _cpu.normalize_columns(x, center, scale, shift, np.empty_like(x))


def column_sums(dy, x, center):
    """Per column of (N, C) arrays, in float64: Σ_n dy and Σ_n dy·(x - center[c])."""
    x, dy = _columns(x), _columns(dy)
    center = _per_column(center, x)
    if is_cupy(x):
        g = dy.astype(np.float64)
        return g.sum(axis=0), (g * (x - center)).sum(axis=0)
    return _cpu.column_sums(dy, x, center)


def combine_columns(dy, x, center, alpha, beta, delta):
    """dx = alpha[c]·dy + beta[c]·(x - center[c]) + delta[c] for (N, C) arrays; the
    coefficients in float64 up to the final multiply-add (as in `combine`)."""
    x, dy = _columns(x), _columns(dy)
    center = _per_column(center, x)
    alpha, beta, delta = (_per_column(a, x, np.float64) for a in (alpha, beta, delta))
    if is_cupy(x):
        return (alpha * dy + beta * (x - center) + delta).astype(x.dtype)
    return _cpu.combine_columns(dy, x, center, alpha, beta, delta, np.empty_like(x))


def _runs(x, k: int) -> int:
    """G = C/k, the runs of k consecutive rows per sample, or an error."""
    C = x.shape[1]
    if k < 1 or C % k:
        raise ValueError(f"runs of k = {k} rows must divide the {C} channels")
    return C // k


def _run_stats(x, k: int, across_batch: bool, *stats):
    """Per-statistic arguments as (1 or N, C/k) float64 arrays."""
    shape = (1 if across_batch else x.shape[0], _runs(x, k))
    return [_filled(shape, a, x, np.float64) for a in stats]


def _channel(x, a, default: float):
    """A per-channel argument as a (C,) array in x's dtype; None becomes `default`."""
    return _filled(x.shape[1], default if a is None else a, x)


def _optional(x, a):
    """(a, True) for a (C,) array (any float dtype); (a placeholder, False) for None."""
    if a is None:
        return get_array_module(x).empty(1, x.dtype), False
    return a.reshape(-1), True


def _renorm(x, renorm):
    """Batch renorm's arguments of `statistics`: (flag, step (1,), warmup, r_steps, d_steps,
    rmax, dmax, corrections (2, C)) from (corrections, step, warmup, r_steps, d_steps, rmax,
    dmax); placeholders, never read, for None."""
    if renorm is None:
        xp = get_array_module(x)
        return False, xp.empty(1, np.int64), 0.0, 0.0, 0.0, 1.0, 0.0, xp.empty((1, 1))
    corrections, step, *schedule = renorm
    return True, step.reshape(1), *(float(v) for v in schedule), corrections


def normalize_runs(
    x,
    k: int,
    eps: float,
    gamma=None,
    beta=None,
    w=None,
    b=None,
    centered=True,
    *,
    across_batch=False,
    scaled=True,
    running=None,
    renorm=None,
):
    """Normalization over runs of k consecutive rows (InstanceNorm: k = 1; GroupNorm: k = C/G;
    LayerNorm on its (N, 1, S) view: k = 1), a statistic per run of each sample, or of every
    sample when `across_batch` (BatchNorm: k = 1); m values a statistic:

        c = Σ x / m, σ² = Σ (x - c)² / m;  or, not `centered`: c = 0, σ² = Σ x² / m
        ρ = 1/sqrt(σ² + eps) (1 if not `scaled`)
        y = (x - c)·ρ·gamma[c]·w[c, s] + beta[c] + b[c, s]

    x (N, C, S); gamma, beta (C,) or None (1, 0); w, b (C, S) tables or None; `running`
    (mean, var, momentum), across the batch only: the (C,) buffers (var may be None) move in
    place by `momentum` towards c and m/(m-1)·σ². Returns y (x's shape and dtype), the centers c
    and rstd = ρ, (1 or N, C/k) in float64.

    `renorm` = (corrections, step, warmup, r_steps, d_steps, rmax, dmax), batch renorm (k = 1
    across the batch, `running` = (μ, σ, momentum)): y = γ·(r·x̂ + d) + β with r, d from the
    moving μ, σ and the limits `formulas.renorm_limits`(step[0], ...) written into corrections
    (2, C) float64; σ moves towards sqrt(σ²_B + eps). See `formulas.finalize_statistic`.

    On the CPU, per-sample statistics run fused (a run's moments and y while it is in cache);
    the rest, and everything on a GPU, is `normalize_runs_composed`: three launches."""
    x = _view(x)
    if (running is not None or renorm is not None) and not across_batch:
        raise ValueError("running estimates of per-sample statistics are not updated here")
    if renorm is not None and (running is None or k != 1 or not centered or not scaled):
        raise ValueError("batch renorm needs its moving mean and std, one channel a statistic")
    if is_cupy(x) or across_batch or not scaled:
        return normalize_runs_composed(
            x, k, eps, gamma, beta, w, b, centered, across_batch, scaled, running, renorm
        )
    shape = (x.shape[0], _runs(x, k))
    y, mean, rstd = np.empty_like(x), np.empty(shape), np.empty(shape)
    gamma, beta = _channel(x, gamma, 1), _channel(x, beta, 0)
    tables = _affine_tables(x, w, b)
    _cpu.normalize_runs(x, k, float(eps), centered, gamma, beta, *tables, y, mean, rstd)
    return y, mean, rstd


def combine_runs(
    dy,
    x,
    k: int,
    mean,
    rstd,
    gamma=None,
    w=None,
    centered=True,
    *,
    across_batch=False,
    scaled=True,
    corrections=None,
):
    """The backward of `normalize_runs` (its statistics differentiated): with g = gamma[c]·dy·w
    and ⟨·⟩ the mean over a statistic's m values, `formulas.dx_terms` and ρ, c as `mean`, `rstd`
    (1 or N, C/k) give

        dx = ρ·g + beta·(x - c) + delta,
        dγ[c] = Σ_n ρ·Σ_s dy·w·(x - c),  dβ[c] = Σ_n Σ_s dy·w,
        sum_gx = Σ g·(x - c) per statistic (a learned eps's gradient is -½·Σ ρ³·sum_gx).

    dy, x (N, C, S); gamma (C,) or None; w (C, S) or None. Returns dx (x's shape and dtype),
    dγ and dβ (C,) in gamma's dtype (x's without one), sum_gx (1 or N, C/k) float64. Fused on
    the CPU for per-sample statistics; else `combine_runs_composed`. `corrections`: batch
    renorm's r, d (2, C) from `normalize_runs`, constants: g = r·gamma[c]·dy, dγ = Σ dy·x̃."""
    x, dy = _view(x), _view(dy)
    if is_cupy(x) or across_batch or not scaled:
        return combine_runs_composed(
            dy, x, k, mean, rstd, gamma, w, centered, across_batch, scaled, corrections
        )
    mean, rstd = _run_stats(x, k, False, mean, rstd)
    dx, sum_dy, sum_dyx = np.empty_like(x), np.empty(x.shape[:2]), np.empty(x.shape[:2])
    _cpu.combine_runs(dy, x, k, centered, mean, rstd, _channel(x, gamma, 1), _tables(x, w)[0],
                      dx, sum_dy, sum_dyx)  # fmt: skip
    sums = (sum_dy, sum_dyx)
    return dx, *_coefficients(sums, x, k, rstd, gamma, centered, False, True, None)[3:]


def _parts(sums, x):
    """Per-row results (N, C) as one chunk a row: (N·C, 1) each, the chunk S."""
    return tuple(a.reshape(-1, 1) for a in sums), x.shape[2]


def normalize_runs_composed(
    x,
    k: int,
    eps: float,
    gamma=None,
    beta=None,
    w=None,
    b=None,
    centered=True,
    across_batch=False,
    scaled=True,
    running=None,
    renorm=None,
):
    """`normalize_runs` in three launches, on either array module: the rows' (chunks')
    moments, `statistics` (a statistic's pooled moments, ρ, the running estimates and its rows'
    center, scale and shift: `formulas.finalize_statistic`), normalize."""
    x = _view(x)
    xp = get_array_module(x)
    N, C, S = x.shape
    G = _runs(x, k)
    if is_cupy(x):
        parts, chunk = _impl(x).moment_parts(x)
    else:
        parts, chunk = _parts(_cpu.row_moments(x), x)
    stats = tuple(xp.empty((1 if across_batch else N, G)) for _ in range(2))
    rows = tuple(xp.empty((N, C), x.dtype) for _ in range(3))
    (gamma, has_gamma), (beta, has_beta) = _optional(x, gamma), _optional(x, beta)
    mean, var, momentum = (None, None, 0.0) if running is None else running
    (mean, has_mean), (var, has_var) = _optional(x, mean), _optional(x, var)
    affine = (gamma, beta, has_gamma, has_beta)
    running = (mean, var, float(momentum), has_mean, has_var)
    flags = (k, across_batch, centered, scaled, float(eps))
    outputs = (*stats, *(r.reshape(-1) for r in rows))
    args = (*parts, chunk, S, C, *flags, *affine, *running, *_renorm(x, renorm), *outputs)
    _impl(x).statistics(stats[0].size, *args)
    return normalize(x, *rows, w, b), *stats


def combine_runs_composed(
    dy,
    x,
    k: int,
    mean,
    rstd,
    gamma=None,
    w=None,
    centered=True,
    across_batch=False,
    scaled=True,
    corrections=None,
):
    """`combine_runs` in three launches, on either array module: the rows' (chunks') gradient
    sums, `coefficients` (dx's per-row coefficients, dγ, dβ: `formulas.finalize_gradient`),
    combine."""
    x, dy = _view(x), _view(dy)
    mean, rstd = _run_stats(x, k, across_batch, mean, rstd)
    if is_cupy(x):
        center = mean
        parts = _impl(x).grad_sum_parts(dy, x, center, w)
    else:
        center = _rows(np.repeat(mean, k, axis=1), x)
        parts = _cpu.row_grad_sums(dy, x, center, *_tables(x, w))
    alpha, beta, delta, *grads = _coefficients(
        parts, x, k, rstd, gamma, centered, across_batch, scaled, corrections
    )
    if is_cupy(x):
        dx = _impl(x).combine(dy, x, center, alpha, beta, delta, w)
    else:
        dx = _cpu.combine(dy, x, center, alpha, beta, delta, *_tables(x, w), np.empty_like(x))
    return dx, *grads


def _coefficients(parts, x, k, rstd, gamma, centered, across_batch, scaled, corrections):
    """`coefficients` for the rows' gradient sums `parts` ((N·C, J) each, or (N, C)): dx's
    per-row alpha, beta, delta (N·C,) float64, dγ and dβ (C,) in gamma's dtype (x's without
    one), and sum_gx per statistic (`combine_runs`); batch renorm's r, d (2, C) or None."""
    xp = get_array_module(x)
    N, C, S = x.shape
    parts = tuple(a.reshape(N * C, -1) for a in parts)
    g, has_gamma = _optional(x, gamma)
    dtype = g.dtype if has_gamma else x.dtype
    m = (N if across_batch else 1) * k * S
    rows = tuple(xp.empty(N * C) for _ in range(3))
    grads = (xp.empty(rstd.shape), xp.empty(C, dtype), xp.empty(C, dtype))
    renorm = corrections is not None
    corrections = corrections if renorm else xp.empty((1, 1))
    flags = (C, k, across_batch, centered, scaled, rstd, m, g, has_gamma, renorm, corrections)
    _impl(x).coefficients(max(rstd.size, C), *parts, *flags, *rows, *grads)
    return (*rows, grads[1], grads[2], grads[0])


class Mixture(NamedTuple):
    """Which statistics a mixture of norms holds besides each row's own (IN) and how it weighs
    them (`kernels.mixtures`): LN where `has_ln`, BN where `has_bn` (the running estimates
    when `bn_fixed`); `switchable` mixes the statistics with softmax(λ), softmax(λ') of
    `logits` = (λ, λ'), (3,) arrays; else the outputs with `weights` (w_in, w_ln, w_bn), or a
    per-channel `gate` (C,) g, clipped to [0, 1] in place: w_bn = g, w_in = 1 - g."""

    has_ln: bool = False
    has_bn: bool = True
    bn_fixed: bool = False
    switchable: bool = False
    weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gate: Any = None
    logits: tuple | None = None
    size: Any = None  # an int64 buffer that receives N, the batch size (batch-layer norm)

    def arguments(self, x) -> tuple:
        """(switchable, mean_logits, var_logits, gate, has_gate, w_in, w_ln, w_bn)."""
        gate, has_gate = _optional(x, self.gate)
        if self.logits is None:
            placeholder = get_array_module(x).empty(3, x.dtype)
            logits = (placeholder, placeholder)
        else:
            logits = self.logits
        weights = tuple(float(w) for w in self.weights)
        return (self.switchable, *logits, gate, has_gate, *weights)


def normalize_mixture(x, eps: float, gamma, beta, mixture: Mixture, running=None):
    """A mixture of norms (`Mixture`, `kernels.mixtures`): y (x's shape and dtype) and the
    statistics for the backward, (stats (3, N·C + N + C): means, biased variances and ρ of the
    rows, the samples, the channels; mix (2, 3): switchable norm's weights), from the rows'
    moments, `mixture_statistics` (a slot per row, sample, channel:
    pooling; the gate's clip; `running` = (mean, var, momentum): the BN running estimates moved,
    or read when `bn_fixed`) and y per row from `mixture_rows`: three launches on a GPU."""
    x = _view(x)
    xp = get_array_module(x)
    N, C, S = x.shape
    if is_cupy(x):
        parts, chunk = _impl(x).moment_parts(x)
    else:
        parts, chunk = _parts(_cpu.row_moments(x), x)
    stats, mix = xp.empty((3, N * C + N + C)), xp.empty((2, 3))
    mean, var, momentum = (None, None, 0.0) if running is None else running
    (mean, has_running), (var, _) = _optional(x, mean), _optional(x, var)
    switchable, mean_logits, var_logits, gate, has_gate, *weights = mixture.arguments(x)
    statistics_args = (*parts, chunk, S, N, C, mixture.has_ln, mixture.has_bn, mixture.bn_fixed,
                       mean, var, float(momentum), has_running and not mixture.bn_fixed, gate,
                       has_gate, *_optional(x, mixture.size), float(eps), switchable, mean_logits,
                       var_logits, mix, stats)  # fmt: skip
    (gamma, has_gamma), (beta, has_beta) = _optional(x, gamma), _optional(x, beta)
    row_args = (*weights, gamma, has_gamma, beta, has_beta)
    n = N * C + N + C
    if is_cupy(x):
        return _impl(x).normalize_mixture(x, n, statistics_args, row_args), (stats, mix)
    rows = np.empty((3, N * C))
    _cpu.mixture_coefficients(n, *statistics_args, *row_args, rows)
    center, scale, shift = (a.reshape(N, C) for a in rows)
    y = _cpu.normalize(
        x,
        _rows(center, x),
        _rows(scale, x),
        _rows(shift, x),
        *_tables(x, None, None),
        np.empty_like(x),
    )
    return y, (stats, mix)


def combine_mixture(dy, x, statistics, eps: float, gamma, mixture: Mixture):
    """The backward of `normalize_mixture`: dx (x's shape and dtype), dγ, dβ (C,) in gamma's
    dtype (x's without one), dg (C,) in the gate's dtype (None without one), and (dλ, dλ')
    (2, 3) in the logits' dtype (None unless switchable): the rows' gradient sums around their
    own means, `mixture_sums` (a slot per sample and channel), dx per row from
    `mixture_row_gradients`: three launches on a GPU."""
    x, dy = _view(x), _view(dy)
    xp = get_array_module(x)
    N, C, S = x.shape
    stats, mix = statistics
    center = stats[0, : N * C].reshape(N, C)
    if is_cupy(x):
        parts = _impl(x).grad_sum_parts(dy, x, center)
    else:
        center = _rows(center, x)
        parts = tuple(
            a.reshape(N * C, 1) for a in _cpu.row_grad_sums(dy, x, center, *_tables(x, None))
        )
    switchable, mean_logits, _, gate, has_gate, *weights = mixture.arguments(x)
    g, has_gamma = _optional(x, gamma)
    dtype = g.dtype if has_gamma else x.dtype
    dgamma, dbeta = xp.empty(C, dtype), xp.empty(C, dtype)
    dgate = xp.empty(C, gate.dtype) if has_gate else gate
    dlogits = xp.empty((2, 3), mean_logits.dtype)
    args = (*parts, N, C, S, stats, float(eps), switchable, mix, gate, has_gate, *weights,
            mixture.has_ln, mixture.has_bn, mixture.bn_fixed, g, has_gamma, xp.empty((2, N + C)),
            dgamma, dbeta, dgate, dlogits)  # fmt: skip
    if is_cupy(x):
        dx = _impl(x).combine_mixture(dy, x, N + C, args)
    else:
        rows = np.empty((3, N * C))
        _cpu.mixture_gradient_coefficients(N + C, *args, rows)
        alpha, beta, delta = (a.reshape(N, C) for a in rows)
        dx = _cpu.combine(dy, x, center, alpha, beta, delta, *_tables(x, None), np.empty_like(x))
    return dx, dgamma, dbeta, dgate if has_gate else None, dlogits if switchable else None


def im2col(
    x,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out=None,
):
    """Each image's convolution columns: x (N, C, H, W) -> (N, C·kh·kw, OH·OW), zero padding
    implied; written into `out` (a contiguous array of that size) when given. On the CPU it
    runs on the calling thread without the GIL (the convolution splits the batch between
    threads)."""
    x = get_array_module(x).ascontiguousarray(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    shape = (N, C, kh, kw, OH, OW)
    cols = get_array_module(x).empty(shape, x.dtype) if out is None else out.reshape(shape)
    _impl(x).im2col(x, kh, kw, sh, sw, ph, pw, OH, OW, cols)
    return cols.reshape(N, C * kh * kw, OH * OW)


def col2im(
    dcols,
    shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    out=None,
):
    """The adjoint of `im2col`: dcols (N, C·kh·kw, OH·OW) summed back into dx of `shape`
    (N, C, H, W), overlapping windows adding up; dx is `out` (contiguous) when given. On the
    CPU it runs on the calling thread without the GIL."""
    N, C, H, W = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    cols = get_array_module(dcols).ascontiguousarray(dcols).reshape(N, C, kh, kw, OH, OW)
    dx = get_array_module(dcols).empty(shape, dcols.dtype) if out is None else out
    return _impl(dcols).col2im(cols, sh, sw, ph, pw, dx)


def shifted_rows(xpad, shape: tuple[int, ...], kernel: tuple[int, int], out=None):
    """A stride-1 convolution's columns from zero-padded images (CPU only): `xpad` holds planes
    of `shape` (N, C, Hp, Wp) flat, with kw - 1 values to spare at the end; row (c, i, j) of
    image n's columns is xpad from (n·C + c)·Hp·Wp + i·Wp + j on, for OH·Wp values
    (OH = Hp - kh + 1). Returns (N, C·kh·kw, OH·Wp), in `out` when given."""
    N, C, Hp, Wp = shape
    kh, kw = kernel
    cols = np.empty((N, C, kh, kw, (Hp - kh + 1) * Wp), xpad.dtype) if out is None else out
    cols = cols.reshape(N, C, kh, kw, -1)
    _cpu.shifted_rows(xpad, C, Hp * Wp, Wp, cols)
    return cols.reshape(N, C * kh * kw, -1)


def add_shifted_rows(dcols, shape: tuple[int, ...], kernel: tuple[int, int], out):
    """The adjoint of `shifted_rows` (CPU only): dcols (N, C·kh·kw, OH·Wp) summed back into
    `out`, the flat padded planes of `shape` (N, C, Hp, Wp) with kw - 1 values to spare
    (overwritten)."""
    N, C, Hp, Wp = shape
    kh, kw = kernel
    dcols = np.ascontiguousarray(dcols).reshape(N, C, kh, kw, -1)
    return _cpu.add_shifted_rows(dcols, C, Hp * Wp, Wp, out)


def max_pool(x, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
    """y (N, C, OH, OW), the max of each window (padding never wins), and the window offset of
    the first maximum (int8 if it fits)."""
    xp = get_array_module(x)
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
    xp = get_array_module(dy)
    dy = xp.ascontiguousarray(dy)
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    dx = xp.empty(shape, dy.dtype)
    return _impl(dy).max_pool_backward(dy, arg, kh, kw, sh, sw, ph, pw, dx)


def relu(x):
    """max(x, 0) in x's shape and dtype: one parallel pass on the CPU, CuPy's on the GPU."""
    if is_cupy(x):
        return get_array_module(x).maximum(x, 0)
    x = np.ascontiguousarray(x)
    return _cpu.relu(x.ravel(), np.empty(x.size, x.dtype)).reshape(x.shape)


def relu_backward(dy, y):
    """dy where y = relu(x) > 0, else 0 (the gradient of `relu`)."""
    if is_cupy(dy):
        return dy * (y > 0)
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    return _cpu.relu_backward(dy.ravel(), y.ravel(), np.empty(dy.size, dy.dtype)).reshape(dy.shape)


def tlu(x, tau):
    """z = max(x, τ[c]) for x (N, C, S) and τ (C,) (FRN's thresholded linear unit)."""
    x = _view(x)
    tau = _filled(x.shape[1], tau, x)
    if is_cupy(x):
        return _impl(x).tlu(x, tau)
    return _cpu.tlu(x, tau, np.empty_like(x))


def tlu_backward(dz, z, tau):
    """The gradients of z = `tlu`(x, τ) from z itself: dx = dz where z > τ[c], else 0, and dτ
    (C,) in float64 = Σ over (n, s) of dz where z ≤ τ[c] (so a tie x = τ sends it to τ)."""
    z, dz = _view(z), _view(dz)
    tau = _filled(z.shape[1], tau, z)
    if is_cupy(z):
        return _impl(z).tlu_backward(dz, z, tau)
    dx = np.empty_like(z)
    return dx, _cpu.tlu_backward(dz, z, tau, dx).sum(axis=0)


def transpose(x):
    """xᵀ of a 2-d array as a contiguous array: a blocked copy on the CPU, CuPy's on the GPU."""
    if x.ndim != 2:
        raise ValueError(f"transpose expects a 2-d array, got shape {x.shape}")
    if is_cupy(x):
        return get_array_module(x).ascontiguousarray(x.T)
    return _cpu.transpose(x, np.empty(x.shape[::-1], x.dtype))


from .inspection import KernelReport, report  # noqa: E402  (it needs only `cpu`)


@contextlib.contextmanager
def first_launches() -> Iterator[dict[str, tuple]]:
    """While the block runs, each CPU kernel launched is noted with the arguments of its first
    launch, {name: args} in launch order (what `report` takes)."""
    launched: dict[str, tuple] = {}

    def note(kernel: str, run: Callable, args: tuple) -> Any:
        launched.setdefault(kernel, args)
        return run(*args)

    with observing(note):
        yield launched


def inspect(name: str, example_args: tuple) -> list[KernelReport]:
    """Run `<name>(*example_args)`, a function of this module, on NumPy arrays and report what
    Numba compiled for each CPU kernel it launched, in the order of their first launch:
    signatures, vector width, threads, cache (see `inspection`)."""
    function = globals().get(name)
    if name.startswith("_") or not isinstance(function, types.FunctionType):
        functions = sorted(
            n
            for n, f in globals().items()
            if isinstance(f, types.FunctionType) and f.__module__ == __name__ and n[0] != "_"
        )
        raise ValueError(f"unknown kernel function {name!r}: expected one of {functions}")
    with first_launches() as launched:
        function(*example_args)
    if not launched:
        raise ValueError(f"kernels.{name} launched no CPU kernel: are its arrays NumPy's?")
    return [report(kernel, args) for kernel, args in launched.items()]
