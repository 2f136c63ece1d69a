"""Matrix products: `matmul` (the `@` operator) and `linear` (y = x Wᵀ + b, one GEMM each way)."""

from __future__ import annotations

from ..autograd import Function
from ..tensor import Tensor
from .elementwise import as_tensor
from .shape import reshape


class MatMul(Function):
    """C = A @ B over the last two axes (leading axes broadcast);
    dA = dC @ Bᵀ, dB = Aᵀ @ dC."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad):
        need_a, need_b = self.needs_input_grad
        da = grad @ self.b.swapaxes(-1, -2) if need_a else None
        db = self.a.swapaxes(-1, -2) @ grad if need_b else None
        return da, db


def matmul(a, b) -> Tensor:
    """`a @ b` with NumPy's rules: a 1-d operand is a row (left) or a column (right) vector."""
    a, b = (a, as_tensor(b, a)) if isinstance(a, Tensor) else (as_tensor(a, b), b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs at least 1-d operands, got shapes {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: shapes {a.shape} and {b.shape} do not match ({k_a} != {k_b} "
            "in the contracted dimension)"
        )
    if a.ndim == 1:
        out_shape = () if b.ndim == 1 else b.shape[:-2] + b.shape[-1:]
        return reshape(matmul(reshape(a, (1, k_a)), b), out_shape)
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (k_b, 1))), a.shape[:-1])
    return MatMul.apply(a, b)


class Linear(Function):
    """y = x Wᵀ + b for x (..., in), W (out, in), b (out,);
    dx = dy W, dW = dyᵀ x, db = Σ dy over all but the last axis."""

    def forward(self, x, weight, bias):
        self.x, self.weight = x, weight
        y = x @ weight.T
        return y if bias is None else y + bias

    def backward(self, grad):
        need_x, need_w, need_b = self.needs_input_grad
        g2 = grad.reshape(-1, grad.shape[-1])
        dx = grad @ self.weight if need_x else None
        dw = g2.T @ self.x.reshape(-1, self.x.shape[-1]) if need_w else None
        return dx, dw, (g2.sum(axis=0) if need_b else None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x Wᵀ + b (PyTorch's `F.linear`)."""
    if x.ndim == 0 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
            f"(expected input (..., {weight.shape[1] if weight.ndim == 2 else '?'}))"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias of shape {bias.shape} for weight {weight.shape}")
    return Linear.apply(x, weight, bias)
