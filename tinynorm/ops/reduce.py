"""Reductions over axes: sum, mean, max (PyTorch's `dim` and `keepdim`)."""

from __future__ import annotations

from .. import backend
from ..autograd import Function
from ..tensor import Tensor


def _axes(dim, ndim: int) -> tuple[int, ...]:
    """`dim` (None, an int or a tuple, negatives allowed) as a sorted tuple of axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    for d in dims:
        if not -ndim <= d < (ndim or 1):
            raise IndexError(f"dim {d} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(d % (ndim or 1) for d in dims))


def _expand(grad, shape, axes, keepdim):
    """Put the reduced axes back into `grad` and broadcast it to `shape` (a read-only view)."""
    xp = backend.get_array_module(grad)
    if not keepdim:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape)


class Sum(Function):
    def forward(self, x, axes, keepdim):
        self.shape, self.axes, self.keepdim = x.shape, axes, keepdim
        return x.sum(axis=axes, keepdims=keepdim)

    def backward(self, grad):
        return _expand(grad, self.shape, self.axes, self.keepdim)


class Max(Function):
    """Max over axes; the gradient is shared equally among tied maxima."""

    def forward(self, x, axes, keepdim):
        self.axes, self.keepdim = axes, keepdim
        y = x.max(axis=axes, keepdims=True)
        self.mask = x == y
        return y if keepdim else y.squeeze(axis=axes)

    def backward(self, grad):
        shape = self.mask.shape
        count = self.mask.sum(axis=self.axes, keepdims=True)
        return self.mask * _expand(grad, shape, self.axes, self.keepdim) / count


def sum(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return Sum.apply(x, axes=_axes(dim, x.ndim), keepdim=keepdim)


def mean(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    axes = _axes(dim, x.ndim)
    count = 1
    for a in axes:
        count *= x.shape[a]
    return Sum.apply(x, axes=axes, keepdim=keepdim) * (1.0 / count)


def max(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    if x.data.size == 0:
        raise ValueError("max() of an empty tensor")
    return Max.apply(x, axes=_axes(dim, x.ndim), keepdim=keepdim)
