"""Weight normalization (Salimans & Kingma 2016) as one op: w = g·v/‖v‖.

The norm is taken per output unit (over every axis but `dim`), or over the whole tensor when
dim is None. With u = v/‖v‖ and G = ∂L/∂w (the paper's eq. 3):

    ∂L/∂g = Σ G·u   (per unit),      ∂L/∂v = g/‖v‖ · (G - u·∂L/∂g)
"""

from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..tensor import Tensor


def norm_axes(ndim: int, dim: int | None) -> tuple[int, ...]:
    """The axes ‖v‖ sums over: all of them, or all but `dim`."""
    return tuple(range(ndim)) if dim is None else tuple(a for a in range(ndim) if a != dim % ndim)


class WeightNorm(Function):
    def forward(self, g, v, *, dim):
        xp = backend.get_array_module(v)
        self.axes, self.g = norm_axes(v.ndim, dim), g
        self.norm = xp.sqrt((v * v).sum(axis=self.axes, keepdims=True))
        self.u = v / self.norm
        return g * self.u

    def backward(self, grad):
        dg = (grad * self.u).sum(axis=self.axes, keepdims=True)
        dv = self.g / self.norm * (grad - self.u * dg) if self.needs_input_grad[1] else None
        return dg.reshape(self.g.shape), dv


def weight_norm(g: Tensor, v: Tensor, dim: int | None = 0) -> Tensor:
    """w = g·v/‖v‖; g has v's shape with size 1 on every axis the norm runs over."""
    return WeightNorm.apply(g, v, dim=dim)
