"""tinynorm: a readable deep-learning mini-framework whose norm layers run on Numba kernels."""

import numpy as np

from . import nn, optim, profiler, viz
from .autograd import enable_grad, is_grad_enabled, no_grad
from .creation import arange, ones, rand, randn, zeros
from .gradcheck import GradcheckError, gradcheck
from .interop import from_dlpack, from_numpy
from .memory import keep_freed_memory
from .ops import cat
from .profiler import profile
from .random import manual_seed
from .serialization import load, save
from .tensor import Tensor, tensor
from .threads import get_num_threads, keep_blas_on_one_thread, set_num_threads

float32 = np.dtype("float32")
float64 = np.dtype("float64")
int64 = np.dtype("int64")

__version__ = "0.1.0"

keep_blas_on_one_thread()  # the cores are for the Numba kernels: see tinynorm/threads.py
keep_freed_memory()  # no page faults on every step's arrays: see tinynorm/memory.py

__all__ = [
    "GradcheckError",
    "Tensor",
    "arange",
    "cat",
    "enable_grad",
    "float32",
    "float64",
    "from_dlpack",
    "from_numpy",
    "get_num_threads",
    "gradcheck",
    "int64",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "nn",
    "no_grad",
    "ones",
    "optim",
    "profile",
    "profiler",
    "rand",
    "randn",
    "save",
    "set_num_threads",
    "tensor",
    "viz",
    "zeros",
]
