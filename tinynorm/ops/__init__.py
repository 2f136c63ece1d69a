"""Differentiable ops on Tensors; each module keeps an op's forward and backward side by side."""

from .conv import conv2d
from .dropout import dropout
from .elementwise import (
    abs,
    add,
    as_tensor,
    cast,
    div,
    exp,
    log,
    mul,
    neg,
    pow,
    relu,
    sigmoid,
    sqrt,
    sub,
    tanh,
    to_device,
)
from .matmul import linear, matmul
from .pool import avg_pool2d, max_pool2d
from .reduce import max, mean, sum
from .shape import cat, flatten, getitem, permute, reshape
from .softmax import cross_entropy, log_softmax, softmax

__all__ = [
    "abs", "add", "as_tensor", "avg_pool2d", "cast", "cat", "conv2d", "cross_entropy", "div",
    "dropout", "exp", "flatten", "getitem", "linear", "log", "log_softmax", "matmul", "max",
    "max_pool2d", "mean", "mul", "neg", "permute", "pow", "relu", "reshape", "sigmoid", "softmax",
    "sqrt", "sub", "sum", "tanh", "to_device",
]
