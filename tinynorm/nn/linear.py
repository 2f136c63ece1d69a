"""Fully connected and convolutional layers (PyTorch's initialization)."""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..ops.conv import pair
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


def _reset(weight: Parameter, bias: Parameter | None) -> None:
    """PyTorch's default: W ~ kaiming_uniform(a=√5), i.e. U(±1/√fan_in); b ~ U(±1/√fan_in)."""
    init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(init.calculate_fan_in_and_fan_out(weight)[0])
        init.uniform_(bias, -bound, bound)


class Linear(Module):
    """y = x Wᵀ + b; x (..., in_features) -> y (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.empty((out_features, in_features), np.float32))
        self.register_parameter(
            "bias", Parameter(np.empty(out_features, np.float32)) if bias else None
        )
        _reset(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class Conv2d(Module):
    """2-d convolution: x (N, C_in, H, W) -> y (N, C_out, H', W'),
    H' = (H + 2·padding - kernel) // stride + 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        shape = (out_channels, in_channels, *self.kernel_size)
        self.weight = Parameter(np.empty(shape, np.float32))
        self.register_parameter(
            "bias", Parameter(np.empty(out_channels, np.float32)) if bias else None
        )
        _reset(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
