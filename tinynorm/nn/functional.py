"""`tinynorm.nn.functional` (import as F): the stateless forms of the layers, PyTorch's names."""

from ..ops import (
    avg_pool2d,
    conv2d,
    cross_entropy,
    dropout,
    linear,
    log_softmax,
    max_pool2d,
    relu,
    sigmoid,
    softmax,
    tanh,
)

__all__ = [
    "avg_pool2d", "conv2d", "cross_entropy", "dropout", "linear", "log_softmax", "max_pool2d",
    "relu", "sigmoid", "softmax", "tanh",
]
