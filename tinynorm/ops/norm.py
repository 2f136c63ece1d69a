"""Normalization as one fused op, computed by the kernels of `tinynorm.kernels`.

Every norm layer views its input as x[n, c, s] (S = product of the spatial dims) and a
statistic pools some rows r = (n, c) of that view (a `Pattern`):

    BatchNorm       per channel, over all samples     Pattern(groups=C, over_batch=True)
    InstanceNorm    per row                           Pattern(groups=C, over_batch=False)
    GroupNorm       per sample and group of channels  Pattern(groups=G, over_batch=False)
    LayerNorm       per sample                        Pattern(groups=1, over_batch=False)

`Normalize` computes, with μ and ρ = 1/sqrt(σ² + ε) given per row as (N, C) arrays,

    x̂ = (x - μ)·ρ,   x̃ = r·x̂ + d,   y = γ·x̃ + β

(r, d: batch renorm's per-channel constants, else 1 and 0). Its backward is the closed form of
the seeds. With m values per statistic, dx̂ = r·γ·dy, and the means ⟨·⟩ over each statistic:

    batch mean and variance:  dx = ρ·(dx̂ - ⟨dx̂⟩ - x̂·⟨dx̂·x̂⟩)      (BN, GN, LN, IN, BRN)
    batch mean only:          dx = ρ·(dx̂ - ⟨dx̂⟩)                   (mean-only BN)
    fixed statistics:         dx = ρ·dx̂                             (running estimates)
    dβ = Σ dy,  dγ = Σ dy·x̃  (over N and S for a per-channel affine, over N for an elementwise one)

Every dx above is alpha·dy + beta·(x - μ) + delta with per-row coefficients, which is what the
`combine` kernel computes: one pass for the row sums Σdy and Σdy·(x - μ), one pass for dx.

`NormalizeRuns` is the same op for the per-sample patterns (IN, GN, LN) with batch statistics:
each statistic covers a run of k consecutive rows, one contiguous block, so the statistics and
y, and the sums and dx, are each computed in one visit of the run (`kernels.normalize_runs`,
`kernels.combine_runs`): 3 passes over memory fewer than `Normalize` after `row_moments`.

`Empty` is every norm's answer to an input without values (N = 0 or an empty spatial dim), as
in PyTorch: an empty output, zero gradients for the parameters, no statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor

GRAD_MODES = ("mean_var", "mean", "none")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # what the kernels take


def check_dtype(op: str, x: Tensor) -> None:
    """The one check of an input dtype for the kernels (every norm layer and functional form
    calls it before it changes any state, and so do conv2d and pooling): float32 or float64,
    else a TypeError naming `op` and the dtype."""
    if x.dtype not in DTYPES:
        raise TypeError(f"{op}: input dtype {x.dtype} is not supported (float32 or float64)")


class Pattern(NamedTuple):
    """Which rows one statistic pools: the C channels form `groups` runs of consecutive
    channels, and a statistic covers one run of one sample, or of every sample if `over_batch`."""

    groups: int
    over_batch: bool

    def pool(self, rows):
        """Sum a per-row array (N, C) over each statistic's rows, broadcast back to (N, C)."""
        xp = backend.get_array_module(rows)
        N, C = rows.shape
        grouped = rows.reshape(N, self.groups, C // self.groups)
        total = grouped.sum(axis=(0, 2) if self.over_batch else 2, keepdims=True)
        return xp.broadcast_to(total, grouped.shape).reshape(N, C)

    def count(self, shape: tuple[int, int, int]) -> int:
        """m: how many values one statistic averages, for an (N, C, S) view."""
        N, C, S = shape
        return (N if self.over_batch else 1) * (C // self.groups) * S


def pooled_moments(row_mean, row_m2, S: int, pattern: Pattern):
    """Mean and biased variance of each statistic of `pattern`, per row (N, C), from each
    row's mean and M2 = Σ_s (x - mean_row)² (S values a row). Rows pool exactly with
    M2 = Σ M2_row + S·Σ (mean_row - mean)²: no E[x²] - E[x]² cancellation."""
    m = pattern.count((*row_mean.shape, S))
    mean = pattern.pool(row_mean) * (S / m)
    var = pattern.pool(row_m2 + S * (row_mean - mean) ** 2) / m
    return mean, var


class Part(NamedTuple):
    """One normalization: its pattern, per-row statistics μ and ρ = 1/sqrt(σ² + ε), and whether
    they are batch statistics (differentiated) or fixed (running estimates, constants)."""

    pattern: Pattern
    mean: object
    rstd: object
    batch: bool


def channel(a, C: int):
    """A per-channel array (C,) as a (1, C) row argument; None stays None."""
    return None if a is None else a.reshape(1, C)


def affine_tables(view, weight, bias) -> list:
    """An elementwise affine's γ and β as (C, S) tables of the (N, C, S) view; None stays None."""
    return [None if t is None else t.reshape(view[1:]) for t in (weight, bias)]


def affine_grads(dy, x3, mean, rstd, sums, needs, elementwise: bool, r=None, d=None):
    """(dγ, dβ) in float64, None where `needs` (of γ, β) says no. Per channel from the row sums
    `sums` = (Σ_s dy, Σ_s dy·(x - μ)) taken without γ: dβ = Σ_n Σ_s dy, dγ = Σ_n Σ_s dy·x̃ with
    x̃ = r·x̂ + d; elementwise (over the view's (C, S)) by a column pass, where `sums` is unused."""
    need_w, need_b = needs
    if not (need_w or need_b):
        return None, None
    if elementwise:
        db, dw = kernels.column_grad_sums(dy, x3, mean, rstd)
        return (dw if need_w else None), (db if need_b else None)
    sum_dy, sum_dyx = sums
    dw = db = None
    if need_w:
        xt = sum_dyx * rstd * (1 if r is None else r)
        if d is not None:
            xt = xt + sum_dy * d
        dw = xt.sum(axis=0)
    if need_b:
        db = sum_dy.sum(axis=0)
    return dw, db


class Normalize(Function):
    """y = γ·(r·(x - μ)·ρ + d) + β over one `Pattern` (see the module docstring)."""

    def forward(
        self,
        x,
        weight,
        bias,
        *,
        view,
        pattern,
        mean,
        rstd,
        grad_mode,
        r=None,
        d=None,
        elementwise=False,
    ):
        x3 = x.reshape(view)
        C = view[1]
        self.x3, self.shape, self.pattern, self.grad_mode = x3, x.shape, pattern, grad_mode
        self.mean, self.rstd, self.elementwise = mean, rstd, elementwise
        self.r, self.d, self.weight, self.bias = channel(r, C), channel(d, C), weight, bias
        if elementwise:  # LayerNorm: γ and β span the normalized shape, a (1, S) table
            y = kernels.normalize(x3, mean, rstd, 0, *affine_tables(view, weight, bias))
        else:
            scale = rstd if r is None else rstd * self.r
            shift = 0 if d is None else self.d
            if weight is not None:
                scale, shift = scale * channel(weight, C), shift * channel(weight, C)
            if bias is not None:
                shift = shift + channel(bias, C)
            y = kernels.normalize(x3, mean, scale, shift)
        return y.reshape(x.shape)

    def backward(self, grad):
        x3, pattern, rstd, C = self.x3, self.pattern, self.rstd, self.x3.shape[1]
        dy = grad.reshape(x3.shape)
        need_x, need_w, need_b = self.needs_input_grad
        w_table = None
        if self.elementwise:  # the sums carry γ; the affine's grads need a column pass
            w_table = affine_tables(x3.shape, self.weight, None)[0]
        sum_dy, sum_dyx = kernels.row_grad_sums(dy, x3, self.mean, w_table)
        dw, db = affine_grads(
            dy,
            x3,
            self.mean,
            rstd,
            (sum_dy, sum_dyx),
            (need_w, need_b),
            self.elementwise,
            self.r,
            self.d,
        )
        g = 1 if self.r is None else self.r  # dx̂ = g·dy per channel (elementwise: γ in w_table)
        if self.weight is not None and not self.elementwise:
            g = g * channel(self.weight, C)
        dx = None
        if need_x:
            m = pattern.count(x3.shape)
            mean_dxh = pattern.pool(g * sum_dy) / m
            mean_dxh_xh = pattern.pool(g * sum_dyx * rstd) / m
            alpha = rstd * g
            beta = -rstd * rstd * mean_dxh_xh if self.grad_mode == "mean_var" else 0
            delta = -rstd * mean_dxh if self.grad_mode != "none" else 0
            dx = kernels.combine(dy, x3, self.mean, alpha, beta, delta, w_table).reshape(self.shape)
        return dx, cast_grad(dw, self.weight), cast_grad(db, self.bias)


class NormalizeRuns(Function):
    """y = γ·(x - μ)·ρ + β with batch statistics over runs of k consecutive rows (IN, GN, LN;
    see `kernels.normalize_runs`), m = k·S values a statistic. Backward, with dx̂ = γ·dy and
    ⟨·⟩ the mean over a run:

        dx = ρ·(dx̂ - ⟨dx̂⟩ - x̂·⟨dx̂·x̂⟩)                  (`kernels.combine_runs`)
        dβ = Σ_n Σ_s dy,  dγ = Σ_n ρ·Σ_s dy·(x - μ)     (per channel, from its row sums)

    An elementwise γ, β (LayerNorm) are (C, S) tables: dx̂ = γ[c, s]·dy, and their gradients
    are sums over N (a column pass)."""

    def forward(self, x, weight, bias, *, view, k, eps, elementwise=False):
        x3 = x.reshape(view)
        self.x3, self.shape, self.k, self.elementwise = x3, x.shape, k, elementwise
        self.weight, self.bias = weight, bias
        self.gamma, beta, tables = weight, bias, (None, None)
        if elementwise:
            self.gamma, beta, tables = None, None, affine_tables(view, weight, bias)
        self.w_table = tables[0]
        y, self.mean, self.rstd = kernels.normalize_runs(x3, k, eps, self.gamma, beta, *tables)
        return y.reshape(x.shape)

    def backward(self, grad):
        x3, k = self.x3, self.k
        dy = grad.reshape(x3.shape)
        need_x, need_w, need_b = self.needs_input_grad
        dx = sums = None
        if need_x:
            dx, *sums = kernels.combine_runs(
                dy, x3, k, self.mean, self.rstd, self.gamma, self.w_table
            )
            dx = dx.reshape(self.shape)
        xp = backend.get_array_module(x3)
        mean, rstd = (xp.repeat(a, k, axis=1) for a in (self.mean, self.rstd))  # per row
        if sums is None and not self.elementwise and (need_w or need_b):
            sums = kernels.row_grad_sums(dy, x3, mean)
        dw, db = affine_grads(dy, x3, mean, rstd, sums, (need_w, need_b), self.elementwise)
        return dx, cast_grad(dw, self.weight), cast_grad(db, self.bias)


class NormalizeColumns(Function):
    """Batch norm of an (N, C) input whose channels are columns (a linear layer's output), with
    no transpose: y = (x - μ)·ρ·γ + β per column, ρ = 1/sqrt(σ² + ε).

    Batch statistics (training; `mean` and `var` not given): μ and σ² (biased) of each column
    are computed here and passed to `report(μ, σ²)` (the running estimates' update); they
    depend on x, so with dx̂ = γ·dy, x̂ = (x - μ)·ρ and ⟨·⟩ the mean over a column's N values:
        dx = ρ·(dx̂ - ⟨dx̂⟩ - x̂·⟨dx̂·x̂⟩).
    Fixed statistics (`mean`, `var` given: the running estimates): dx = ρ·γ·dy.
    Both: dγ = Σ_n dy·x̂, dβ = Σ_n dy.
    """

    def forward(self, x, weight, bias, *, eps, mean=None, var=None, report=None):
        self.batch = mean is None
        if self.batch:
            mean, m2 = kernels.column_moments(x)
            var = m2 / x.shape[0]
            if report is not None:
                report(mean, var)
        xp = backend.get_array_module(x)
        self.x, self.mean, self.rstd = x, mean, 1.0 / xp.sqrt(var + eps)
        self.weight, self.bias = weight, bias
        scale = self.rstd if weight is None else self.rstd * weight
        return kernels.normalize_columns(x, mean, scale, 0 if bias is None else bias)

    def backward(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        sum_dy, sum_dyx = kernels.column_sums(grad, self.x, self.mean)
        rho, N = self.rstd, self.x.shape[0]
        g = 1 if self.weight is None else self.weight.astype(np.float64)
        dx = None
        if need_x:
            beta = -(rho**3) * g * sum_dyx / N if self.batch else 0  # -ρ²·⟨dx̂·x̂⟩ per column
            delta = -rho * g * sum_dy / N if self.batch else 0  # -ρ·⟨dx̂⟩
            dx = kernels.combine_columns(grad, self.x, self.mean, rho * g, beta, delta)
        dw = sum_dyx * rho if need_w else None
        db = sum_dy if need_b else None
        return dx, cast_grad(dw, self.weight), cast_grad(db, self.bias)


class Empty(Function):
    """A norm of an input without values: y = x (empty), dx = dy (empty), and zero gradients
    for the other inputs (γ, β, mixing weights: the sums over no values)."""

    def forward(self, x, *params):
        self.params = params
        return x.copy()

    def backward(self, grad):
        zeros = [
            None if p is None else backend.get_array_module(p).zeros_like(p) for p in self.params
        ]
        return (grad, *zeros)


def empty(x: Tensor, *params: Tensor | None) -> Tensor:
    """The empty output of a norm for an input `x` without values; `params` get zero grads."""
    return Empty.apply(x, *params)


def cast_grad(g, like):
    """A parameter gradient (float64 sums) in the parameter's dtype and shape."""
    return None if g is None else g.astype(like.dtype).reshape(like.shape)


def normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    view,
    pattern: Pattern,
    mean,
    rstd,
    grad_mode: str,
    r=None,
    d=None,
    elementwise: bool = False,
) -> Tensor:
    """y = γ·(r·(x - μ)·ρ + d) + β; `view` is the (N, C, S) shape the pattern applies to,
    `mean`/`rstd` the statistics per row (broadcastable to (N, C)); `grad_mode` says which of
    them depend on x: "mean_var" (batch statistics), "mean" (mean-only) or "none" (fixed)."""
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    return Normalize.apply(
        x,
        weight,
        bias,
        view=view,
        pattern=pattern,
        mean=mean,
        rstd=rstd,
        grad_mode=grad_mode,
        r=r,
        d=d,
        elementwise=elementwise,
    )


def normalize_runs(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    view,
    k: int,
    eps: float,
    elementwise: bool = False,
) -> Tensor:
    """y = γ·(x - μ)/sqrt(σ² + ε) + β with μ, σ² (biased) the batch statistics of each run of k
    consecutive rows of the (N, C, S) `view` (IN: k = 1, GN: k = C/G, LN: view (N, 1, S), k =
    1); γ, β per channel, or (1, S) tables of the normalized shape if `elementwise`."""
    return NormalizeRuns.apply(x, weight, bias, view=view, k=k, eps=eps, elementwise=elementwise)
