"""Norms with separate statistics per time step, for recurrent cells (Cooijmans et al. 2016,
"Recurrent Batch Normalization", §3): at step t a training batch (N, F) is normalized with its
own batch statistics, and the running estimates of step t (row t of (max_steps, F) buffers)
move towards them; in eval, step t uses row t. Steps t ≥ max_steps use the last row, as the
paper does for sequences longer than those seen in training. γ and β are shared over the steps.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.normalize import check_dtype
from ..tensor import Tensor
from .module import Module, Parameter


class _StepNorm(Module):
    """γ (F,) filled with `weight_init`, β (F,) zeros or None; running_mean (max_steps, F) zeros,
    running_var ones, num_batches_tracked (max_steps,). eps=None: the variant's `default_eps`."""

    default_eps: float

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        eps: float | None = None,
        momentum: float | None = 0.1,
        weight_init: float = 1.0,
        bias: bool = True,
    ):
        super().__init__()
        if max_steps < 1:
            raise ValueError(
                f"{type(self).__name__}: max_steps must be at least 1, got {max_steps}"
            )
        self.num_features, self.max_steps = num_features, max_steps
        self.eps = self.default_eps if eps is None else eps
        self.momentum = momentum
        self.weight = Parameter(np.full(num_features, weight_init, np.float32))
        self.register_parameter(
            "bias", Parameter(np.zeros(num_features, np.float32)) if bias else None
        )
        self.register_buffer(
            "running_mean", Tensor(np.zeros((max_steps, num_features), np.float32))
        )
        self.register_buffer("running_var", Tensor(np.ones((max_steps, num_features), np.float32)))
        self.register_buffer("num_batches_tracked", Tensor(np.zeros(max_steps, np.int64)))

    def _estimates(self, x: Tensor, t: int) -> tuple[Tensor, Tensor, float]:
        """Step t's running mean and variance (views into the buffers, which the op updates
        in place) and the weight of this batch in them: `momentum`, or 1/count when None."""
        name = type(self).__name__
        check_dtype(name, x)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}({self.num_features}): expected input (N, {self.num_features}), "
                f"got shape {x.shape}"
            )
        if t < 0:
            raise ValueError(f"{name}: time step must be >= 0, got {t}")
        t = min(t, self.max_steps - 1)
        factor = self.momentum
        if self.training and x.shape[0] > 0:
            count = self.num_batches_tracked.data
            count[t] += 1
            factor = 1.0 / float(count[t]) if self.momentum is None else self.momentum
        return Tensor(self.running_mean.data[t]), Tensor(self.running_var.data[t]), factor or 0.0

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, max_steps={self.max_steps}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )


class StepBatchNorm1d(_StepNorm):
    """Batch norm of (N, F) per feature over N, y = (x - μ_t)/sqrt(σ²_t + ε)·γ + β, with the
    statistics of time step t (batch in training, row t of the running estimates in eval)."""

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        weight_init: float = 1.0,
        bias: bool = True,
    ):
        super().__init__(num_features, max_steps, eps, momentum, weight_init, bias)

    def forward(self, x: Tensor, t: int) -> Tensor:
        mean, var, factor = self._estimates(x, t)
        return ops.batch_norm(x, mean, var, self.weight, self.bias, self.training, factor, self.eps)


class StepBatchLayerNorm(_StepNorm):
    """Batch-layer norm (`tinynorm.nn.BatchLayerNorm`) of (N, F) with the batch statistics of
    time step t: y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(F) + β, the BN part from row t
    of the running estimates in eval, m the last training batch size."""

    def __init__(
        self,
        num_features: int,
        max_steps: int,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        weight_init: float = 1.0,
        bias: bool = True,
    ):
        super().__init__(num_features, max_steps, eps, momentum, weight_init, bias)
        self.register_buffer("batch_size", Tensor(np.zeros((), np.int64)))

    def forward(self, x: Tensor, t: int) -> Tensor:
        mean, var, factor = self._estimates(x, t)
        if self.training and x.shape[0] > 0:
            self.batch_size.data[...] = x.shape[0]
        m = int(self.batch_size.data) or x.shape[0]
        return ops.batch_layer_norm(
            x, mean, var, self.weight, self.bias, self.training, factor, self.eps, batch_size=m
        )
