"""tinynorm: a readable deep-learning mini-framework whose norm layers run on Numba kernels."""

import os

# OpenBLAS worker threads spin for ~0.1 s after each matrix product; on a few cores they would
# then steal the CPUs from the Numba kernels that run next. Make them sleep at once (effective
# when tinynorm is imported before NumPy, as in every program of this package).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np

from . import nn, optim
from .autograd import enable_grad, is_grad_enabled, no_grad
from .creation import arange, ones, rand, randn, zeros
from .gradcheck import GradcheckError, gradcheck
from .ops import cat
from .random import manual_seed
from .serialization import load, save
from .tensor import Tensor, tensor

float32 = np.dtype("float32")
float64 = np.dtype("float64")
int64 = np.dtype("int64")

__version__ = "0.1.0"

__all__ = [
    "GradcheckError",
    "Tensor",
    "arange",
    "cat",
    "enable_grad",
    "float32",
    "float64",
    "gradcheck",
    "int64",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "nn",
    "no_grad",
    "ones",
    "optim",
    "rand",
    "randn",
    "save",
    "tensor",
    "zeros",
]
