"""Norms that mix statistics of several patterns, on the same kernels as `norm.py`.

`MixedNormalize` mixes normalized *outputs* (batch-instance norm: BN + IN; batch-layer norm:
BN + LN), `SwitchableNormalize` mixes the *statistics* (switchable norm: IN, LN and BN).
Both reduce to the same three kernel calls as a single norm: `normalize` with per-row
scale/shift, `row_grad_sums`, and `combine` with per-row coefficients, because every term of
their closed-form gradients is alpha·dy + beta·(x - c) + delta for a per-row center c.
"""

from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor
from .norm import cast_grad, channel


class MixedNormalize(Function):
    """y = γ·Σ_k w_k·x̂_k + β with x̂_k = (x - μ_k)·ρ_k and per-channel weights w_k (tensors).

    With c = μ_1 as common center, Σ_k w_k x̂_k = (x - c)·Σ_k w_k ρ_k + Σ_k w_k ρ_k (c - μ_k).
    Backward, with A = Σ_s dy and B = Σ_s dy·(x - c) per row, Σ_s dy·x̂_k = ρ_k (B + A (c - μ_k)):
      dw_k = Σ γ ρ_k (B + A (c - μ_k)),  dγ = Σ Σ_k w_k ρ_k (B + A (c - μ_k)),  dβ = Σ A,
      dx = Σ_k ρ_k (dx̂_k - ⟨dx̂_k⟩_k - x̂_k ⟨dx̂_k x̂_k⟩_k)  with dx̂_k = γ w_k dy
      (the bracket reduces to dx̂_k for fixed statistics).
    """

    def forward(self, x, weight, bias, *mix_weights, view, parts):
        x3 = x.reshape(view)
        C = view[1]
        self.x3, self.shape, self.parts = x3, x.shape, parts
        self.weight, self.bias, self.mix = weight, bias, mix_weights
        self.w = [channel(w, C) for w in mix_weights]
        gamma = 1 if weight is None else channel(weight, C)
        center = parts[0].mean
        scale = sum(w * p.rstd for w, p in zip(self.w, parts))
        shift = sum(w * p.rstd * (center - p.mean) for w, p in zip(self.w, parts))
        shift = gamma * shift + (0 if bias is None else channel(bias, C))
        return kernels.normalize(x3, center, gamma * scale, shift).reshape(x.shape)

    def backward(self, grad):
        x3, parts = self.x3, self.parts
        C = x3.shape[1]
        dy = grad.reshape(x3.shape)
        center = parts[0].mean
        A, B = kernels.row_grad_sums(dy, x3, center)
        gamma = 1 if self.weight is None else channel(self.weight, C)
        dyxh = [p.rstd * (B + A * (center - p.mean)) for p in parts]  # Σ_s dy·x̂_k per row
        need_x, need_g, need_b, *need_w = self.needs_input_grad
        dmix = [(gamma * s).sum(axis=0) if need else None for s, need in zip(dyxh, need_w)]
        dgamma = sum(w * s for w, s in zip(self.w, dyxh)).sum(axis=0) if need_g else None
        dbeta = A.sum(axis=0) if need_b else None
        dx = None
        if need_x:
            alpha = beta = delta = 0
            for w, p, s in zip(self.w, parts, dyxh):
                g = gamma * w  # dx̂_k = g·dy
                alpha = alpha + p.rstd * g
                if p.batch:
                    m = p.pattern.count(x3.shape)
                    b_k = -p.rstd * p.rstd * p.pattern.pool(g * s) / m
                    beta = beta + b_k
                    delta = delta - p.rstd * p.pattern.pool(g * A) / m + b_k * (center - p.mean)
            dx = kernels.combine(dy, x3, center, alpha, beta, delta).reshape(self.shape)
        grads = [cast_grad(dgamma, self.weight), cast_grad(dbeta, self.bias)]
        return (dx, *grads, *(cast_grad(d, w) for d, w in zip(dmix, self.mix)))


class SwitchableNormalize(Function):
    """Switchable norm: μ = Σ_k wm_k μ_k, σ² = Σ_k wv_k σ²_k over k ∈ (IN, LN, BN), then
    y = γ (x - μ)/sqrt(σ² + ε) + β. The LN and BN moments come from the IN (row) moments.

    Backward, with A = Σ_s dy, B = Σ_s dy (x - μ) per row and ρ = 1/sqrt(σ² + ε):
      ∂L/∂μ = -ρ γ A,  ∂L/∂σ² = -½ ρ³ γ B   (per row),
      dwm_k = Σ ∂L/∂μ · μ_k,  dwv_k = Σ ∂L/∂σ² · σ²_k,
      dx = ρ γ dy + Σ_k [wm_k/m_k · Σ_k ∂L/∂μ + 2 wv_k/m_k · Σ_k ∂L/∂σ² · (x - μ_k)]
    where Σ_k sums over the rows of k's statistic (only batch statistics contribute).
    """

    def forward(self, x, weight, bias, mean_weights, var_weights, *, view, stats, batch, eps):
        x3 = x.reshape(view)
        C = view[1]
        self.x3, self.shape, self.stats, self.batch = x3, x.shape, stats, batch
        self.weight, self.bias = weight, bias
        self.wm, self.wv = mean_weights, var_weights
        self.mean = sum(mean_weights[k] * m for k, (_, m, _) in enumerate(stats))
        var = sum(var_weights[k] * v for k, (_, _, v) in enumerate(stats))
        self.rstd = 1.0 / backend.get_array_module(var).sqrt(var + eps)
        gamma = 1 if weight is None else channel(weight, C)
        shift = 0 if bias is None else channel(bias, C)
        return kernels.normalize(x3, self.mean, gamma * self.rstd, shift).reshape(x.shape)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        x3, rstd = self.x3, self.rstd
        C = x3.shape[1]
        dy = grad.reshape(x3.shape)
        A, B = kernels.row_grad_sums(dy, x3, self.mean)
        gamma = 1 if self.weight is None else channel(self.weight, C)
        d_mean = -rstd * gamma * A
        d_var = -0.5 * rstd**3 * gamma * B
        need_x, need_g, need_b, need_wm, need_wv = self.needs_input_grad
        dwm = xp.stack([(d_mean * m).sum() for _, m, _ in self.stats]) if need_wm else None
        dwv = xp.stack([(d_var * v).sum() for _, _, v in self.stats]) if need_wv else None
        dx = None
        if need_x:
            beta = delta = 0
            for k, ((pattern, mean_k, _), batch) in enumerate(zip(self.stats, self.batch)):
                if batch:
                    m = pattern.count(x3.shape)
                    b_k = 2 * self.wv[k] / m * pattern.pool(d_var)
                    beta = beta + b_k
                    delta = delta + self.wm[k] / m * pattern.pool(d_mean)
                    delta = delta + b_k * (self.mean - mean_k)
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
    x: Tensor, weight: Tensor | None, bias: Tensor | None, mix_weights, *, view, parts
) -> Tensor:
    """y = γ·Σ_k w_k·x̂_k + β for the `parts` (Part) and per-channel weight tensors."""
    return MixedNormalize.apply(x, weight, bias, *mix_weights, view=view, parts=tuple(parts))


def switchable_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_weights: Tensor,
    var_weights: Tensor,
    *,
    view,
    stats,
    batch,
    eps: float,
) -> Tensor:
    return SwitchableNormalize.apply(
        x, weight, bias, mean_weights, var_weights, view=view, stats=stats, batch=batch, eps=eps
    )
