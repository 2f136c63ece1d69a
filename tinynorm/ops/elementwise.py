"""Elementwise ops: arithmetic with broadcasting, exp/log/sqrt, activations, casts.

Each backward returns one gradient per input, shaped like the broadcast result; the engine
sums it back to each input's own shape (`autograd.unbroadcast`).
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor


def as_tensor(x, like: Tensor) -> Tensor:
    """`x` as a Tensor; a Python number takes `like`'s dtype (float32 stays float32)."""
    if isinstance(x, Tensor):
        return x
    xp = backend.get_array_module(like.data)
    if isinstance(x, numbers.Number):
        return Tensor(xp.asarray(x, dtype=xp.result_type(like.data, x)))
    return Tensor(xp.asarray(x))


def _pair(a, b) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        return a, as_tensor(b, a)
    return as_tensor(a, b), b


class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, grad):
        return grad, grad


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, grad):
        return grad, -grad


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        a, b = self.needs_input_grad
        return (grad * self.b if a else None), (grad * self.a if b else None)


class Div(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, grad):
        ga = grad / self.b
        return ga, (-ga * self.a / self.b if self.needs_input_grad[1] else None)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad


class Pow(Function):
    """x ** p for a constant real p."""

    def forward(self, x, p):
        self.x, self.p = x, p
        return x**p

    def backward(self, grad):
        return grad * self.p * self.x ** (self.p - 1)


class Exp(Function):
    def forward(self, x):
        self.y = backend.get_array_module(x).exp(x)
        return self.y

    def backward(self, grad):
        return grad * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log(x)

    def backward(self, grad):
        return grad / self.x


class Sqrt(Function):
    def forward(self, x):
        self.y = backend.get_array_module(x).sqrt(x)
        return self.y

    def backward(self, grad):
        return grad / (2 * self.y)


class Abs(Function):
    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).abs(x)

    def backward(self, grad):
        return grad * backend.get_array_module(self.x).sign(self.x)


class Maximum(Function):
    """max(a, b), broadcast; the gradient goes to the larger input (to a on a tie)."""

    def forward(self, a, b):
        self.a_wins = a >= b
        return backend.get_array_module(a).maximum(a, b)

    def backward(self, grad):
        return grad * self.a_wins, grad * ~self.a_wins


class ReLU(Function):
    """y = max(x, 0); dy/dx = 1 where x > 0."""

    def forward(self, x):
        self.y = kernels.relu(x)
        return self.y

    def backward(self, grad):
        return kernels.relu_backward(grad, self.y)


class ThresholdedLinearUnit(Function):
    """z = max(y, τ) with a threshold per channel τ (C,) for y (N, C, ...) (FRN's TLU).
    dy = dz where z > τ, dτ = Σ over (n, ...) of dz where z ≤ τ: both from z, so nothing more
    is kept; a tie y = τ sends the gradient to τ."""

    def forward(self, y, tau):
        self.tau, self.dims = tau, y.shape[:2] + (-1,)
        self.z = kernels.tlu(y.reshape(self.dims), tau)
        return self.z.reshape(y.shape)

    def backward(self, grad):
        dy, dtau = kernels.tlu_backward(grad.reshape(self.dims), self.z, self.tau)
        return dy.reshape(grad.shape), dtau.astype(self.tau.dtype, copy=False)


def logistic(x):
    """σ(x) = 1 / (1 + e^-x) of an array, in the overflow-free form (tanh(x/2) + 1) / 2."""
    return 0.5 * (backend.get_array_module(x).tanh(0.5 * x) + 1)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x); dy/dx = y (1 - y)."""

    def forward(self, x):
        self.y = logistic(x)
        return self.y

    def backward(self, grad):
        return grad * self.y * (1 - self.y)


class Tanh(Function):
    """y = tanh x; dy/dx = 1 - y²."""

    def forward(self, x):
        self.y = backend.get_array_module(x).tanh(x)
        return self.y

    def backward(self, grad):
        return grad * (1 - self.y * self.y)


class Cast(Function):
    def forward(self, x, dtype):
        self.dtype = x.dtype
        return x.astype(dtype, copy=False)

    def backward(self, grad):
        return grad.astype(self.dtype, copy=False)


class ToDevice(Function):
    def forward(self, x, device):
        self.device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, grad):
        return backend.to_device(grad, self.device)


def add(a, b) -> Tensor:
    return Add.apply(*_pair(a, b))


def sub(a, b) -> Tensor:
    return Sub.apply(*_pair(a, b))


def mul(a, b) -> Tensor:
    return Mul.apply(*_pair(a, b))


def div(a, b) -> Tensor:
    return Div.apply(*_pair(a, b))


def neg(x: Tensor) -> Tensor:
    return Neg.apply(x)


def pow(x: Tensor, p: float) -> Tensor:
    return Pow.apply(x, p=p)


def exp(x: Tensor) -> Tensor:
    return Exp.apply(x)


def log(x: Tensor) -> Tensor:
    return Log.apply(x)


def sqrt(x: Tensor) -> Tensor:
    return Sqrt.apply(x)


def abs(x: Tensor) -> Tensor:
    return Abs.apply(x)


def maximum(a, b) -> Tensor:
    return Maximum.apply(*_pair(a, b))


def relu(x: Tensor) -> Tensor:
    return ReLU.apply(x)


def tlu(y: Tensor, tau: Tensor) -> Tensor:
    """max(y, τ) with τ (C,) a threshold per channel of y (N, C, ...)."""
    return ThresholdedLinearUnit.apply(y, tau)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid.apply(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh.apply(x)


def cast(x: Tensor, dtype: np.dtype) -> Tensor:
    if x.dtype == dtype:
        return x
    if x.requires_grad and dtype.kind != "f":
        return Tensor(x.data.astype(dtype))  # an integer copy leaves the graph
    return Cast.apply(x, dtype=dtype)


def to_device(x: Tensor, device: str) -> Tensor:
    return x if x.device == device else ToDevice.apply(x, device=device)
