"""Normalization as one op: a `Statistic` says which values one statistic pools, `Normalize`
computes the statistics, y, and the closed-form backward.

Every norm sees its input as x[n, c, s], dims (N, C, S) (S = the product of the spatial
dims), rows r = (n, c):

    BatchNorm       Statistic(across_batch=True)    per channel, over all samples
    InstanceNorm    Statistic()                     per sample and channel
    GroupNorm       Statistic(channels=C // G)      per sample and run of C/G channels
    LayerNorm       Statistic(), dims (N, 1, S)     per sample
    RMSNorm, FRN    centered=False                  c = 0 and σ² = ⟨x²⟩
    mean-only BN    scaled=False                    ρ = 1

The op computes x̂ = (x - c)·ρ (c = the mean μ, ρ = 1/sqrt(σ² + ε)), x̃ = r·x̂ + d (batch
renorm's per-channel corrections, else 1 and 0) and y = γ·x̃ + β. Batch statistics are computed
here from x, so the backward differentiates them (`kernels.formulas.dx_terms`, with dL/dx̂ =
r·γ·dy); fixed statistics (running estimates) are constants: dx = ρ·r·γ·dy. Always dβ = Σ dy,
dγ = Σ dy·x̃, summed over N and S per channel, or over N for an elementwise affine.

One formula, three layouts of the kernels:

    runs      batch statistics, each a run of k consecutive rows of one sample (IN, GN, LN,
              RMSNorm, FRN) or of every sample (BN, mean-only BN, their running estimates
              moved by the kernel: `Running`): `kernels.normalize_runs` / `combine_runs`,
              fused per run on the CPU, else three kernels each way
    columns   per-channel statistics of an input with S = 1, such as (N, C), on the CPU: the
              column kernels read the channels as the columns of (N, C), no transpose
    rows      the rest (SyncBatchNorm, running estimates of per-sample statistics, fixed
              statistics): row kernels with per-row coefficients

Batch renorm takes the runs layout too (a `Renorm`: its r, d in the statistics kernel), but
the columns layout and SyncBatchNorm's rows compute them with array operations.

`Empty` is every norm's answer to an input without values (N = 0 or an empty spatial dim), as
in PyTorch: an empty output, zero gradients for the parameters, no statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .. import kernels
from ..autograd import Function
from ..backend import get_array_module
from ..kernels.formulas import dx_terms, pool_moments, renorm_limits
from ..tensor import Tensor

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the kernels take


def check_dtype(op: str, x: Tensor) -> None:
    """The one check of an input dtype for the kernels (every norm layer and functional form
    calls it before it changes any state, and so do conv2d and pooling): float32 or float64,
    else a TypeError naming `op` and the dtype."""
    if x.dtype not in DTYPES:
        raise TypeError(f"{op}: input dtype {x.dtype} is not supported (float32 or float64)")


class Statistic(NamedTuple):
    """Which values of the input x[n, c, s] one statistic pools, and what it removes: the C
    channels form runs of `channels` consecutive channels; a statistic covers one run of one
    sample, or of every sample if `across_batch`; `centered` subtracts the mean (else c = 0 and
    σ² = ⟨x²⟩), `scaled` divides by sqrt(σ² + ε) (else ρ = 1)."""

    across_batch: bool = False
    channels: int = 1
    centered: bool = True
    scaled: bool = True

    def describe(self, fixed: bool = False) -> str:
        """What one statistic pools, in words: "statistics per channel over (N, S)" (batch
        norm), "… per sample and 4 channels over (4, S)" (group norm), "uncentered"/"unscaled"
        added; "fixed statistics …" when running estimates stood in for them."""
        sample = "" if self.across_batch else "sample and "
        k = self.channels
        group = "channel" if k == 1 else f"{k} channels"
        over = ("N, " if self.across_batch else "") + ("" if k == 1 else f"{k}, ") + "S"
        flags = [" uncentered"] * (not self.centered) + [" unscaled"] * (not self.scaled)
        source = "fixed statistics" if fixed else "statistics"
        return f"{source} per {sample}{group} over ({over})" + "".join(flags)

    def count(self, dims: tuple[int, int, int]) -> int:
        """m: how many values one statistic pools, for dims (N, C, S)."""
        N, _, S = dims
        return (N if self.across_batch else 1) * self.channels * S

    def _runs(self, rows):
        """A per-row array (N, C) as (N, C/k, k): one run of k channels per middle index."""
        N, C = rows.shape
        return rows.reshape(N, C // self.channels, self.channels)

    def _axes(self):
        return (0, 2) if self.across_batch else 2

    def _one_row(self, rows) -> bool:
        """Whether each statistic covers one row of the per-row array `rows` (N, C)."""
        return self.channels == 1 and (not self.across_batch or rows.shape[0] == 1)

    def moments(self, row_mean, row_m2, S: int):
        """Each statistic's center c and σ² (biased), (1 or N, C/k), from each row's mean and
        M2 = Σ_s (x - mean_row)² (S values a row), pooled with `formulas.pool_moments`."""
        if self._one_row(row_mean):
            mean, var = row_mean, row_m2 / S
        else:
            mean, m2, m = pool_moments(self._runs(row_mean), self._runs(row_m2), S, self._axes())
            mean, var = mean[..., 0], (m2 / m)[..., 0]
        if not self.centered:
            var, mean = var + mean * mean, 0 * mean
        return mean, var

    def sums(self, rows):
        """A per-row array (N, C) summed over each statistic's rows: (1 or N, C/k)."""
        if self._one_row(rows):
            return rows
        return self._runs(rows).sum(axis=self._axes(), keepdims=True)[..., 0]

    def per_row(self, stats, N: int):
        """Per-statistic values (1 or N, C/k) for every row: broadcastable to (N, C)."""
        if self.channels == 1:
            return stats
        G = stats.shape[1]
        runs = get_array_module(stats).broadcast_to(stats[..., None], (N, G, self.channels))
        return runs.reshape(N, G * self.channels)


def blend(buffer: Tensor, value, momentum: float) -> None:
    """buffer ← (1 - momentum)·buffer + momentum·value, in place (a running estimate)."""
    buffer.data[...] = (1 - momentum) * buffer.data + momentum * value


def _average(stats):
    """Per-statistic values (1 or N, C) averaged over the samples: (C,)."""
    return stats[0] if len(stats) == 1 else stats.mean(axis=0)


class Running(NamedTuple):
    """The running estimates a training step moves, as a `report`: the (C,) buffers `mean` and
    `var` (or None) by `momentum` towards the batch's c and unbiased m/(m-1)·σ² (averaged over
    the samples for per-sample statistics). Across the batch, `Normalize` hands them to the
    statistics kernel, which moves them where it computes the statistics."""

    mean: Tensor
    var: Tensor | None
    momentum: float

    def __call__(self, mean, var, m: int) -> None:
        blend(self.mean, _average(mean), self.momentum)
        if self.var is not None:
            blend(self.var, _average(var) * (m / (m - 1)), self.momentum)

    def buffers(self) -> tuple:
        """(mean, var or None, momentum) as the kernels take them: arrays and a number."""
        return self.mean.data, None if self.var is None else self.var.data, self.momentum


class Renorm(NamedTuple):
    """Batch renorm's state for one training step (Ioffe 2017): the moving μ and σ, (C,)
    buffers moving at `momentum`, and the limits' schedule, `formulas.renorm_limits` after
    `step` steps (an int64 array: the layer's step counter, read where it lives). From the
    batch's μ_B, σ_B: r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B - μ)/σ, -dmax, dmax), then
    μ, σ move towards μ_B, σ_B. `Normalize` hands it to the statistics kernel, which does all
    of that; called as (μ_B, σ_B) -> (r, d), the same with array operations (the columns layout
    and SyncBatchNorm; the step is read back to the host there)."""

    mean: Tensor
    std: Tensor
    momentum: float
    step: object
    schedule: tuple[float, float, float, float, float]  # warmup, r_steps, d_steps, rmax, dmax

    def __call__(self, mean_b, std_b):
        xp = get_array_module(mean_b)
        rmax, dmax = renorm_limits(float(self.step.reshape(-1)[0]), *self.schedule)
        mean_b, std_b = mean_b[0], std_b[0]
        mu, sigma = self.mean.data, self.std.data
        r = xp.clip(std_b / sigma, 1 / rmax, rmax)
        d = xp.clip((mean_b - mu) / sigma, -dmax, dmax)
        blend(self.mean, mean_b, self.momentum)
        blend(self.std, std_b, self.momentum)
        return r, d

    def arguments(self, corrections) -> tuple:
        """`kernels.normalize_runs`' renorm: (corrections, step, *schedule)."""
        return corrections, self.step, *self.schedule


def per_channel(a, C: int):
    """A per-channel array (C,) as a (1, C) row; None stays None."""
    return None if a is None else a.reshape(1, C)


def cast_grad(g, like):
    """A parameter gradient (float64 sums) in the parameter's dtype and shape; None stays None."""
    return None if g is None else g.astype(like.dtype, copy=False).reshape(like.shape)


class Normalize(Function):
    """y = γ·(r·(x - c)·ρ + d) + β over one `Statistic` (see the module docstring).

    forward(x, weight, bias, dims=(N, C, S), statistic=..., eps=...), and optionally:
      learned_eps         a 4th input, a (1,) tensor added to eps (per-sample batch statistics
                          only): dL/dε = Σ over the statistics of -½·ρ³·Σ dL/dx̂·(x - c)
      fixed=(c, ρ)        per-channel constants (C,) instead of batch statistics
      report(c, σ², m)    told the batch statistics, (1 or N, C/k), and how many values each
                          pools: the running estimates' update
      group               a `distributed.ProcessGroup`: batch statistics over every rank's
                          batch (SyncBatchNorm), and the backward's sums over every rank's;
                          a rank may bring an empty batch (it joins the collectives)
      renorm              a `Renorm`: batch renorm's corrections r, d from the batch statistics
      elementwise=True    γ, β span (C, S) (LayerNorm, RMSNorm) instead of one value a channel
    """

    def describe(self) -> str:
        return self.statistic.describe(fixed=not self.batch)

    def forward(
        self,
        x,
        weight,
        bias,
        learned_eps=None,
        *,
        dims,
        statistic: Statistic,
        eps: float = 0.0,
        fixed=None,
        report: Callable | None = None,
        renorm: Renorm | None = None,
        elementwise: bool = False,
        group=None,
    ):
        N, C, S = dims
        self.statistic, self.shape, self.batch = statistic, x.shape, fixed is None
        self.weight, self.bias, self.elementwise = weight, bias, elementwise
        # row c of dims (1, C, N) is column c: the CPU's column kernels; a GPU takes the runs
        columns = statistic.across_batch and S == 1 and not kernels.is_cupy(x)
        if learned_eps is not None:
            if statistic.across_batch or report is not None or group:
                raise ValueError("a learned eps needs per-sample batch statistics")
            eps = eps + float(learned_eps.reshape(-1)[0])
        running = report.buffers() if isinstance(report, Running) else None
        if renorm is not None:
            running = renorm.mean.data, renorm.std.data, renorm.momentum
        self.runs = self.batch and not (group or columns)
        self.runs &= report is None or (statistic.across_batch and running is not None)
        self.group, self.corrections = group, None
        if self.runs:
            if renorm is not None:
                self.corrections = get_array_module(x).empty((2, C))
                renorm = renorm.arguments(self.corrections)
            return self._forward_runs(x.reshape(dims), eps, running, renorm).reshape(x.shape)
        self.kernels = COLUMNS if columns else ROWS
        self.x = x.reshape(N, C) if columns else x.reshape(dims)
        self.dims = (1, C, N) if columns else dims
        xp = get_array_module(x)
        if self.batch:
            self.count = statistic.count(self.dims)
            if self.count:
                mean, var = statistic.moments(*self.kernels.moments(self.x), self.dims[2])
            else:  # a synced rank without values: it adds nothing to the pool
                mean = var = xp.zeros((1, C))
            if group is not None:
                mean, var, self.count = pooled_across(group, mean, var, self.count)
            if report is not None:
                report(mean, var, self.count)
            rstd = 1.0 / xp.sqrt(var + eps) if statistic.scaled else xp.ones_like(var)
            self.r, self.d = renorm(mean, 1.0 / rstd) if renorm else (None, None)
            self.rstd_stats = rstd
            mean, rstd = (statistic.per_row(a, self.dims[0]) for a in (mean, rstd))
        else:
            mean, rstd = (xp.broadcast_to(xp.asarray(a, np.float64), (1, C)) for a in fixed)
            self.r = self.d = None
        self.center, self.rstd = mean, rstd
        scale = rstd if self.r is None else rstd * self.r
        shift = 0 if self.d is None else self.d
        if weight is not None:
            scale, shift = scale * per_channel(weight, C), shift * per_channel(weight, C)
        if bias is not None:
            shift = shift + per_channel(bias, C)
        y = self.kernels.normalize(self.x, mean.astype(x.dtype), scale, shift)
        return y.reshape(x.shape)

    def _forward_runs(self, x3, eps: float, running, renorm):
        """The statistics, the running estimates' update (batch renorm's corrections) and y in
        three kernels (on the CPU, per-sample statistics in one: `kernels.normalize_runs`)."""
        gamma, beta, tables = self.weight, self.bias, (None, None)
        if self.elementwise:
            gamma, beta, tables = None, None, affine_tables(x3.shape, self.weight, self.bias)
        self.x, self.gamma, self.w_table = x3, gamma, tables[0]
        stat = self.statistic
        y, self.center, self.rstd = kernels.normalize_runs(
            x3,
            stat.channels,
            eps,
            gamma,
            beta,
            *tables,
            stat.centered,
            across_batch=stat.across_batch,
            scaled=stat.scaled,
            running=running,
            renorm=renorm,
        )
        return y

    def backward(self, grad):
        if self.runs:
            return self._backward_runs(grad.reshape(self.x.shape))
        need_x, need_w, need_b = self.needs_input_grad
        dy = grad.reshape(self.x.shape)
        C, xp = self.dims[1], get_array_module(grad)
        sum_dy, sum_dyx = self.kernels.grad_sums(dy, self.x, self.center.astype(dy.dtype))
        dw, db = affine_grads(sum_dy, sum_dyx, self.rstd, self.r, self.d)
        dx = None
        if need_x:
            g = 1 if self.r is None else per_channel(self.r, C)  # dL/dx̂ = g·dy
            if self.weight is not None:
                g = g * per_channel(self.weight, C).astype(np.float64)
            alpha = self.rstd * g
            beta = delta = 0
            if self.batch:
                stat = self.statistic
                sums = xp.stack([stat.sums(g * sum_dy), stat.sums(g * sum_dyx)])
                if self.group is not None:  # the sums over every rank's values
                    sums = self.group.all_reduce_(sums)
                mean_g, mean_gx = sums / self.count
                beta, delta = dx_terms(self.rstd_stats, mean_g, mean_gx, stat.centered, stat.scaled)
                beta, delta = (stat.per_row(a, self.dims[0]) for a in (beta, delta))
            center = self.center.astype(dy.dtype)
            dx = self.kernels.combine(dy, self.x, center, alpha, beta, delta).reshape(self.shape)
        return (
            dx,
            cast_grad(dw if need_w else None, self.weight),
            cast_grad(db if need_b else None, self.bias),
        )

    def _backward_runs(self, dy):
        """dx, dγ, dβ (a per-channel affine's) and Σ dL/dx̂·(x - c) from one kernel call
        (`kernels.combine_runs`; dx is computed even when only the parameters need a
        gradient); an elementwise affine's gradients from one more."""
        x3, stat = self.x, self.statistic
        need_x, need_w, need_b, need_eps = (*self.needs_input_grad, False)[:4]
        dx, dw, db, sum_gx = kernels.combine_runs(
            dy,
            x3,
            stat.channels,
            self.center,
            self.rstd,
            self.gamma,
            self.w_table,
            stat.centered,
            across_batch=stat.across_batch,
            scaled=stat.scaled,
            corrections=self.corrections,
        )
        d_eps = None
        if need_eps:  # dL/dε = Σ over the statistics of -½·ρ³·Σ dL/dx̂·(x - c)
            d_eps = (-0.5 * self.rstd**3 * sum_gx).sum().reshape(1).astype(dy.dtype)
        if self.elementwise and (need_w or need_b):
            center, rstd = (stat.per_row(a, x3.shape[0]) for a in (self.center, self.rstd))
            db, dw = kernels.column_grad_sums(dy, x3, center, rstd)
        return (
            dx.reshape(self.shape) if need_x else None,
            cast_grad(dw if need_w else None, self.weight),
            cast_grad(db if need_b else None, self.bias),
            d_eps,
        )


def pooled_across(group, mean, var, count: int):
    """The statistics of every rank's batch together, exact (`formulas.pool_moments` over each
    rank's mean, M2 = σ²·m and count m, gathered in one collective): (mean, σ², global count)."""
    xp = get_array_module(mean)
    parts = group.all_gather(xp.stack([mean, var * count, xp.full(mean.shape, float(count))]))
    pooled, m2, n = pool_moments(parts[:, 0], parts[:, 1], parts[:, 2], 0)
    total = int(n.flat[0])
    if total <= 1:
        raise ValueError(f"expected more than 1 value per channel over all ranks, got {total}")
    return pooled[0], m2[0] / total, total


def affine_grads(sum_dy, sum_dyx, rstd, r=None, d=None):
    """(dγ, dβ) per channel in float64 from the per-row sums Σ_s dy and Σ_s dy·(x - c), with
    x̃ = r·(x - c)·ρ + d: dγ = Σ_n (r·ρ·Σ_s dy·(x - c) + d·Σ_s dy), dβ = Σ_n Σ_s dy."""
    xt = sum_dyx * rstd * (1 if r is None else r)
    if d is not None:
        xt = xt + sum_dy * d
    return xt.sum(axis=0), sum_dy.sum(axis=0)


def affine_tables(dims, weight, bias) -> list:
    """An elementwise affine's γ and β as (C, S) tables for dims (N, C, S); None stays None."""
    return [None if t is None else t.reshape(dims[1:]) for t in (weight, bias)]


class _Layout(NamedTuple):
    """The four kernels of one layout, each taking and giving per-row arrays (rows, C)."""

    moments: Callable
    normalize: Callable
    grad_sums: Callable
    combine: Callable


def _as_row(f):
    """A column kernel whose per-column results (C,) come back as one row (1, C)."""

    def call(*args):
        return tuple(a.reshape(1, -1) for a in f(*args))

    return call


ROWS = _Layout(kernels.row_moments, kernels.normalize, kernels.row_grad_sums, kernels.combine)
COLUMNS = _Layout(  # per-column arguments may be (1, C) rows: the kernels broadcast them to (C,)
    _as_row(kernels.column_moments),
    kernels.normalize_columns,
    _as_row(kernels.column_sums),
    kernels.combine_columns,
)


class Empty(Function):
    """A norm of an input without values: y = x (empty), dx = dy (empty), and zero gradients
    for the other inputs (γ, β, mixing weights: the sums over no values)."""

    def forward(self, x, *params):
        self.params = params
        return x.copy()

    def backward(self, grad):
        zeros = [None if p is None else get_array_module(p).zeros_like(p) for p in self.params]
        return (grad, *zeros)


def empty(x: Tensor, *params: Tensor | None) -> Tensor:
    """The empty output of a norm for an input `x` without values; `params` get zero grads."""
    return Empty.apply(x, *params)
