"""Layers and models: `Module`, `Parameter` and the PyTorch-named layers built on them."""

from . import functional, init, utils
from .container import ModuleList, Sequential
from .layers import (
    AvgPool2d,
    Dropout,
    Flatten,
    Identity,
    LogSoftmax,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .linear import Conv2d, Linear
from .module import Module, Parameter
from .normalization import (
    BatchInstanceNorm2d,
    BatchLayerNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchRenorm1d,
    BatchRenorm2d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    LayerNorm,
    MeanOnlyBatchNorm1d,
    MeanOnlyBatchNorm2d,
    SwitchableNorm2d,
)

__all__ = [
    "AvgPool2d",
    "BatchInstanceNorm2d",
    "BatchLayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "GroupNorm",
    "Identity",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "LayerNorm",
    "Linear",
    "LogSoftmax",
    "MaxPool2d",
    "MeanOnlyBatchNorm1d",
    "MeanOnlyBatchNorm2d",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SwitchableNorm2d",
    "Tanh",
    "functional",
    "init",
    "utils",
]
