"""Norms that mix instance (IN), layer (LN) and batch (BN) statistics, as one op on the mixture
kernels (`kernels.normalize_mixture` / `combine_mixture`, formulas in `kernels/mixtures.py`):

    batch-instance norm   y = γ·(g·x̂_BN + (1 - g)·x̂_IN) + β, a gate g per channel
    batch-layer norm      y = γ·(w_LN·x̂_LN + w_BN·x̂_BN) + β, two constants
    switchable norm       μ = Σ_k a_k μ_k, σ² = Σ_k b_k σ²_k over (IN, LN, BN) with
                          a = softmax(λ), b = softmax(λ'); y = γ·(x - μ)/sqrt(σ² + ε) + β

The op computes every statistic from one pass of row moments and differentiates all of them
(BN's too, unless fixed: the running estimates in eval), three kernel launches each way on a
GPU: the reduction, a small kernel over the rows, samples and channels, the elementwise pass.
"""

from __future__ import annotations

from .. import kernels
from ..autograd import Function
from ..kernels import Mixture
from ..tensor import Tensor
from .normalize import Statistic, cast_grad


class MixedNormalize(Function):
    """forward(x, weight, bias, gate, mean_logits, var_logits, dims=(N, C, S), mixture=...,
    eps=..., running=None): y of the `kernels.Mixture` `mixture` (its gate and logits are the
    op's inputs, None where absent); `running` = (mean, var, momentum), BN's running estimates,
    moved by a training step (or read, when the mixture's BN statistics are fixed).
    Backward: dx, dγ, dβ, dg, dλ, dλ' in closed form (see `kernels/mixtures.py`)."""

    def describe(self) -> str:
        """Each statistic mixed, one per line ("fixed" for running estimates)."""
        mix, C = self.mixture, self.x3.shape[1]
        stats = [Statistic()] * (mix.switchable or mix.gate is not None)
        stats += [Statistic(channels=C)] * mix.has_ln
        lines = [s.describe() for s in stats]
        if mix.has_bn:
            lines.append(Statistic(across_batch=True).describe(fixed=mix.bn_fixed))
        return "\n".join(lines)

    def forward(
        self,
        x,
        weight,
        bias,
        gate=None,
        mean_logits=None,
        var_logits=None,
        *,
        dims,
        mixture: Mixture,
        eps: float,
        running=None,
    ):
        logits = None if mean_logits is None else (mean_logits, var_logits)
        self.mixture = mixture._replace(gate=gate, logits=logits)
        self.x3, self.shape, self.eps, self.weight = x.reshape(dims), x.shape, eps, weight
        self.params = (weight, bias, gate, mean_logits, var_logits)
        y, self.saved = kernels.normalize_mixture(self.x3, eps, weight, bias, self.mixture, running)
        return y.reshape(x.shape)

    def backward(self, grad):
        dx, dgamma, dbeta, dgate, dlogits = kernels.combine_mixture(
            grad.reshape(self.x3.shape), self.x3, self.saved, self.eps, self.weight, self.mixture
        )
        dmean, dvar = (None, None) if dlogits is None else dlogits
        grads = (dgamma, dbeta, dgate, dmean, dvar)
        grads = (None if p is None else cast_grad(g, p) for g, p in zip(grads, self.params))
        return dx.reshape(self.shape), *grads


def mixed_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    dims,
    mixture: Mixture,
    eps: float,
    running=None,
    gate: Tensor | None = None,
    logits: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The `MixedNormalize` op of x (its dims (N, C, S)) for a `kernels.Mixture`."""
    mean_logits, var_logits = (None, None) if logits is None else logits
    return MixedNormalize.apply(
        x,
        weight,
        bias,
        gate,
        mean_logits,
        var_logits,
        dims=dims,
        mixture=mixture,
        eps=eps,
        running=running,
    )
