"""Layers and models: `Module`, `Parameter` and the PyTorch-named layers built on them."""

from . import functional, init
from .container import ModuleList, Sequential
from .layers import AvgPool2d, Dropout, Flatten, LogSoftmax, MaxPool2d, ReLU, Sigmoid, Softmax, Tanh
from .linear import Conv2d, Linear
from .module import Module, Parameter

__all__ = [
    "AvgPool2d", "Conv2d", "Dropout", "Flatten", "Linear", "LogSoftmax", "MaxPool2d", "Module",
    "ModuleList", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh", "functional",
    "init",
]
