"""Factory functions: zeros, ones, randn, rand, arange (PyTorch's names and defaults)."""

from __future__ import annotations

import numpy as np

from . import backend
from .random import generator
from .tensor import Tensor, _shape_args


def _make(array: np.ndarray, requires_grad: bool, device: str) -> Tensor:
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)


def zeros(*shape, dtype=np.float32, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    return _make(np.zeros(_shape_args(shape), dtype), requires_grad, device)


def ones(*shape, dtype=np.float32, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    return _make(np.ones(_shape_args(shape), dtype), requires_grad, device)


def randn(*shape, dtype=np.float32, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """Standard normal samples from the seeded generator (`tinynorm.manual_seed`)."""
    array = generator().standard_normal(_shape_args(shape)).astype(dtype)
    return _make(array, requires_grad, device)


def rand(*shape, dtype=np.float32, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """Uniform samples in [0, 1) from the seeded generator."""
    return _make(generator().random(_shape_args(shape)).astype(dtype), requires_grad, device)


def arange(start, end=None, step=1, dtype=None, device: str = "cpu") -> Tensor:
    if end is None:
        start, end = 0, start
    array = np.arange(start, end, step)
    if dtype is None:
        dtype = np.int64 if array.dtype.kind in "iu" else np.float32
    return _make(array.astype(dtype), False, device)
