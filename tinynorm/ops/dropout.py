"""Inverted dropout: zero each value with probability p and scale the rest by 1/(1-p)."""

from __future__ import annotations

from ..autograd import Function
from ..random import generator_for
from ..tensor import Tensor


class Dropout(Function):
    """y = x · m / (1-p) with m ~ Bernoulli(1-p); dx = dy · m / (1-p)."""

    def forward(self, x, p):
        keep = generator_for(x).random(x.shape, dtype=x.dtype) >= p
        self.scale = keep * x.dtype.type(1 / (1 - p)) if p < 1 else keep * x.dtype.type(0)
        return x * self.scale

    def backward(self, grad):
        return grad * self.scale


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0:
        return x
    return Dropout.apply(x, p=p)
