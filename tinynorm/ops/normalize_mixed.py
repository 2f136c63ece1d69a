"""Norms that mix several statistics, on the same kernels and formulas as `normalize.py`.

`MixedNormalize` mixes normalized *outputs* (batch-instance norm: BN + IN; batch-layer norm:
BN + LN), `SwitchableNormalize` mixes the *statistics* (switchable norm: IN, LN and BN). Both
compute each `Component`'s statistics from one `row_moments` pass, inside the op that
differentiates them, and reduce to the three kernel calls of a single norm: `normalize` with
per-row scale and shift, `row_grad_sums`, and `combine` with per-row coefficients, because every
term of their gradients is alpha·dy + beta·(x - c) + delta for a per-row center c.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .. import kernels
from ..autograd import Function
from ..backend import get_array_module
from ..kernels.formulas import dx_terms
from ..tensor import Tensor
from .normalize import Statistic, cast_grad, per_channel


class Component(NamedTuple):
    """One statistic of a mixture: what it pools; `fixed` = (μ, σ²) per channel (C,) to use
    instead of the batch's (running estimates); `report(μ, σ², m)` told the batch statistics."""

    statistic: Statistic
    fixed: tuple | None = None
    report: Callable | None = None


class _Moments(NamedTuple):
    """A component's statistics: per statistic (1 or N, C/k) and per row (N, C)."""

    component: Component
    mean: object  # per row
    var: object  # per row
    var_stats: object  # per statistic (None when fixed)


def _describe(parts: list[_Moments]) -> str:
    """Each component's statistic, "fixed" where it used running estimates: one per line."""
    return "\n".join(p.component.statistic.describe(fixed=p.var_stats is None) for p in parts)


def _moments(x3, components) -> list[_Moments]:
    """Each component's mean and biased variance, from one `row_moments` pass over x3."""
    N, C, S = x3.shape
    xp = get_array_module(x3)
    rows = kernels.row_moments(x3) if any(c.fixed is None for c in components) else None
    out = []
    for comp in components:
        if comp.fixed is not None:
            mean, var = (xp.asarray(a, np.float64).reshape(1, C) for a in comp.fixed)
            out.append(_Moments(comp, mean, var, None))
            continue
        mean, var = comp.statistic.moments(*rows, S)
        if comp.report is not None:
            comp.report(mean, var, comp.statistic.count(x3.shape))
        per_row = comp.statistic.per_row
        out.append(_Moments(comp, per_row(mean, N), per_row(var, N), var))
    return out


class MixedNormalize(Function):
    """y = γ·Σ_k w_k·x̂_k + β with x̂_k = (x - μ_k)·ρ_k, ρ_k = 1/sqrt(σ²_k + ε), per-channel
    weights w_k (tensors) and one `Component` each.

    With c = μ_1 as common center, Σ_k w_k x̂_k = (x - c)·Σ_k w_k ρ_k + Σ_k w_k ρ_k (c - μ_k).
    Backward, with A = Σ_s dy and B = Σ_s dy·(x - c) per row, Σ_s dy·x̂_k = ρ_k (B + A (c - μ_k)):
      dw_k = Σ γ ρ_k (B + A (c - μ_k)),  dγ = Σ Σ_k w_k ρ_k (B + A (c - μ_k)),  dβ = Σ A,
      dx = Σ_k [ρ_k·g_k·dy + beta_k·(x - μ_k) + delta_k]  with g_k = γ w_k and `dx_terms`
      (beta_k = delta_k = 0 for fixed statistics).
    """

    def describe(self) -> str:
        return _describe(self.parts)

    def forward(self, x, weight, bias, *mix_weights, dims, components, eps):
        x3 = x.reshape(dims)
        C = dims[1]
        xp = get_array_module(x)
        self.x3, self.shape, self.eps = x3, x.shape, eps
        self.weight, self.bias, self.mix = weight, bias, mix_weights
        self.parts = _moments(x3, components)
        self.rstd = [1.0 / xp.sqrt(p.var + eps) for p in self.parts]
        self.w = [per_channel(w, C) for w in mix_weights]
        gamma = 1 if weight is None else per_channel(weight, C)
        center = self.parts[0].mean
        scale = sum(w * r for w, r in zip(self.w, self.rstd))
        shift = sum(w * r * (center - p.mean) for w, r, p in zip(self.w, self.rstd, self.parts))
        shift = gamma * shift + (0 if bias is None else per_channel(bias, C))
        return kernels.normalize(x3, center, gamma * scale, shift).reshape(x.shape)

    def backward(self, grad):
        x3, parts = self.x3, self.parts
        C = x3.shape[1]
        dy = grad.reshape(x3.shape)
        center = parts[0].mean
        A, B = kernels.row_grad_sums(dy, x3, center)
        gamma = 1 if self.weight is None else per_channel(self.weight, C)
        dyxh = [r * (B + A * (center - p.mean)) for r, p in zip(self.rstd, parts)]  # Σ_s dy·x̂_k
        need_x, need_g, need_b, *need_w = self.needs_input_grad
        dmix = [(gamma * s).sum(axis=0) if need else None for s, need in zip(dyxh, need_w)]
        dgamma = sum(w * s for w, s in zip(self.w, dyxh)).sum(axis=0) if need_g else None
        dbeta = A.sum(axis=0) if need_b else None
        dx = None
        if need_x:
            alpha = beta = delta = 0
            for w, rstd, p in zip(self.w, self.rstd, parts):
                g = gamma * w  # dL/dx̂_k = g·dy
                alpha = alpha + rstd * g
                if p.var_stats is None:
                    continue
                stat = p.component.statistic
                m, N = stat.count(x3.shape), x3.shape[0]
                gx = g * (B + A * (center - p.mean))  # Σ_s g·dy·(x - μ_k) per row
                rstd_stats = 1.0 / get_array_module(A).sqrt(p.var_stats + self.eps)
                b_k, d_k = dx_terms(rstd_stats, stat.sums(g * A) / m, stat.sums(gx) / m, True, True)
                b_k, d_k = stat.per_row(b_k, N), stat.per_row(d_k, N)
                beta = beta + b_k
                delta = delta + d_k + b_k * (center - p.mean)
            dx = kernels.combine(dy, x3, center, alpha, beta, delta).reshape(self.shape)
        grads = [cast_grad(dgamma, self.weight), cast_grad(dbeta, self.bias)]
        return (dx, *grads, *(cast_grad(d, w) for d, w in zip(dmix, self.mix)))


class SwitchableNormalize(Function):
    """Switchable norm: μ = Σ_k wm_k μ_k, σ² = Σ_k wv_k σ²_k over the components k (IN, LN,
    BN), then y = γ (x - μ)/sqrt(σ² + ε) + β.

    Backward, with A = Σ_s dy, B = Σ_s dy (x - μ) per row and ρ = 1/sqrt(σ² + ε):
      ∂L/∂μ = -ρ γ A,  ∂L/∂σ² = -½ ρ³ γ B   (per row),
      dwm_k = Σ ∂L/∂μ · μ_k,  dwv_k = Σ ∂L/∂σ² · σ²_k,
      dx = ρ γ dy + Σ_k [wm_k/m_k · Σ_k ∂L/∂μ + 2 wv_k/m_k · Σ_k ∂L/∂σ² · (x - μ_k)]
    where Σ_k sums over the rows of k's statistic (only batch statistics contribute).
    """

    def describe(self) -> str:
        return _describe(self.parts)

    def forward(self, x, weight, bias, mean_weights, var_weights, *, dims, components, eps):
        x3 = x.reshape(dims)
        C = dims[1]
        self.x3, self.shape, self.weight, self.bias = x3, x.shape, weight, bias
        self.wm, self.wv = mean_weights, var_weights
        self.parts = _moments(x3, components)
        self.mean = sum(wm * p.mean for wm, p in zip(mean_weights, self.parts))
        var = sum(wv * p.var for wv, p in zip(var_weights, self.parts))
        self.rstd = 1.0 / get_array_module(var).sqrt(var + eps)
        gamma = 1 if weight is None else per_channel(weight, C)
        shift = 0 if bias is None else per_channel(bias, C)
        return kernels.normalize(x3, self.mean, gamma * self.rstd, shift).reshape(x.shape)

    def backward(self, grad):
        xp = get_array_module(grad)
        x3, rstd = self.x3, self.rstd
        N, C, _ = x3.shape
        dy = grad.reshape(x3.shape)
        A, B = kernels.row_grad_sums(dy, x3, self.mean)
        gamma = 1 if self.weight is None else per_channel(self.weight, C)
        d_mean = -rstd * gamma * A
        d_var = -0.5 * rstd**3 * gamma * B
        need_x, need_g, need_b, need_wm, need_wv = self.needs_input_grad
        dwm = xp.stack([(d_mean * p.mean).sum() for p in self.parts]) if need_wm else None
        dwv = xp.stack([(d_var * p.var).sum() for p in self.parts]) if need_wv else None
        dx = None
        if need_x:
            beta = delta = 0
            for k, p in enumerate(self.parts):
                if p.var_stats is None:
                    continue
                stat = p.component.statistic
                m = stat.count(x3.shape)
                b_k = stat.per_row(2 * self.wv[k] / m * stat.sums(d_var), N)
                beta = beta + b_k
                delta = delta + stat.per_row(self.wm[k] / m * stat.sums(d_mean), N)
                delta = delta + b_k * (self.mean - p.mean)
            dx = kernels.combine(dy, x3, self.mean, rstd * gamma, beta, delta)
            dx = dx.reshape(self.shape)
        dgamma = (rstd * B).sum(axis=0) if need_g else None
        dbeta = A.sum(axis=0) if need_b else None
        return (
            dx,
            cast_grad(dgamma, self.weight),
            cast_grad(dbeta, self.bias),
            cast_grad(dwm, self.wm),
            cast_grad(dwv, self.wv),
        )


def mixed_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mix_weights,
    *,
    dims,
    components,
    eps: float,
) -> Tensor:
    """y = γ·Σ_k w_k·x̂_k + β for the `components` and per-channel weight tensors."""
    return MixedNormalize.apply(
        x, weight, bias, *mix_weights, dims=dims, components=tuple(components), eps=eps
    )
