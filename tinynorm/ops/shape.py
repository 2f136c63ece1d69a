"""Ops that move values around without changing them: reshape, permute, indexing, cat."""

from __future__ import annotations

from collections.abc import Sequence

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor


class Reshape(Function):
    def forward(self, x, shape):
        self.shape = x.shape
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} to {shape}") from None

    def backward(self, grad):
        return grad.reshape(self.shape)


def _transposed(a, axes):
    """`a` with its axes permuted: a view, except a 2-d transpose, which the blocked `transpose`
    kernel copies (a later reshape or kernel would copy the strided view far more slowly)."""
    if a.ndim == 2 and axes[0] % 2 == 1:
        return kernels.transpose(a)
    return a.transpose(axes)


class Permute(Function):
    def forward(self, x, axes):
        if sorted(a % (x.ndim or 1) for a in axes) != list(range(x.ndim)):
            raise ValueError(f"permute: {axes} is not a permutation of the {x.ndim} dimensions")
        self.axes = axes
        return _transposed(x, axes)

    def backward(self, grad):
        inverse = [0] * len(self.axes)
        for i, a in enumerate(self.axes):
            inverse[a % len(self.axes)] = i
        return _transposed(grad, inverse)


def _is_basic(index) -> bool:
    """Basic indexing (ints, slices, None, ...) never repeats an element, advanced may."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


class GetItem(Function):
    def forward(self, x, index):
        self.shape, self.index = x.shape, index
        return x[index]

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        dx = xp.zeros(self.shape, dtype=grad.dtype)
        if _is_basic(self.index):
            dx[self.index] = grad
        else:
            xp.add.at(dx, self.index, grad)  # repeated indices add up
        return dx


class Cat(Function):
    def forward(self, *arrays, dim):
        xp = backend.get_array_module(arrays[0])
        self.dim = dim
        self.bounds = [0]
        for a in arrays:
            self.bounds.append(self.bounds[-1] + a.shape[dim])
        return xp.concatenate(arrays, axis=dim)

    def backward(self, grad):
        index = [slice(None)] * grad.ndim
        pieces = []
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            index[self.dim] = slice(lo, hi)
            pieces.append(grad[tuple(index)])
        return tuple(pieces)


def reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return Reshape.apply(x, shape=tuple(shape))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dims start_dim..end_dim into one (PyTorch's `torch.flatten`)."""
    if x.ndim == 0:
        return reshape(x, (1,))
    start, end = start_dim % x.ndim, end_dim % x.ndim
    merged = 1
    for n in x.shape[start : end + 1]:
        merged *= n
    return reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1 :])


def permute(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    return Permute.apply(x, axes=tuple(axes))


def getitem(x: Tensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(x, index=index)


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension (PyTorch's `torch.cat`)."""
    if not tensors:
        raise ValueError("cat() needs at least one tensor")
    ndim = tensors[0].ndim
    shapes = [t.shape for t in tensors]
    dim = dim % ndim
    if any(
        len(s) != ndim or s[:dim] + s[dim + 1 :] != shapes[0][:dim] + shapes[0][dim + 1 :]
        for s in shapes
    ):
        raise ValueError(f"cat along dim {dim}: shapes {shapes} differ outside that dim")
    return Cat.apply(*tensors, dim=dim)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join same-shaped tensors along a new dimension (PyTorch's `torch.stack`)."""
    if not tensors:
        raise ValueError("stack() needs at least one tensor")
    shape = tuple(tensors[0].shape)
    if any(tuple(t.shape) != shape for t in tensors):
        raise ValueError(f"stack: shapes {[tuple(t.shape) for t in tensors]} differ")
    dim = dim % (len(shape) + 1)
    return cat([reshape(t, shape[:dim] + (1,) + shape[dim:]) for t in tensors], dim)
