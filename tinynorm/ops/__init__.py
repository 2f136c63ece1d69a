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
from .normalization import (
    batch_instance_norm,
    batch_layer_norm,
    batch_norm,
    batch_renorm,
    group_norm,
    instance_norm,
    layer_norm,
    mean_only_batch_norm,
    switchable_norm,
)
from .pool import avg_pool2d, max_pool2d
from .reduce import max, mean, sum
from .shape import cat, flatten, getitem, permute, reshape
from .softmax import cross_entropy, log_softmax, softmax

__all__ = [
    "abs",
    "add",
    "as_tensor",
    "avg_pool2d",
    "batch_instance_norm",
    "batch_layer_norm",
    "batch_norm",
    "batch_renorm",
    "cast",
    "cat",
    "conv2d",
    "cross_entropy",
    "div",
    "dropout",
    "exp",
    "flatten",
    "getitem",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "linear",
    "log",
    "log_softmax",
    "matmul",
    "max",
    "max_pool2d",
    "mean",
    "mean_only_batch_norm",
    "mul",
    "neg",
    "permute",
    "pow",
    "relu",
    "reshape",
    "sigmoid",
    "softmax",
    "sqrt",
    "sub",
    "sum",
    "switchable_norm",
    "tanh",
    "to_device",
]
