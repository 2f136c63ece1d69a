"""Arrays of other libraries as tensors, without copies: `from_numpy` and `from_dlpack`.

DLPack is the array ecosystem's agreement for handing memory across libraries: the producer's
`__dlpack__()` describes its buffer (pointer, dtype, shape, strides, device) and the consumer
wraps the same memory. NumPy (≥ 1.22), CuPy, PyTorch and JAX all speak it. The way out is on
`Tensor` itself: `np.asarray(t)` (`Tensor.__array__`), and `Tensor.__dlpack__` /
`__dlpack_device__`, which `torch.from_dlpack(t)`, `cupy.from_dlpack(t)` and
`np.from_dlpack(t)` read.

    t = tinynorm.from_dlpack(torch_tensor)      # the same memory: a write through one is
    u = torch.from_dlpack(t)                    # seen by the other
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from .tensor import Tensor

KINDS = "biuf"  # what a tensor holds: bool, signed and unsigned integers, floating point
DLPACK_CPU, DLPACK_CUDA = 1, 2
DLPACK_DEVICES = {  # the DLPack standard's device types, to name one in an error
    1: "CPU",
    2: "CUDA",
    3: "CUDA host",
    4: "OpenCL",
    7: "Vulkan",
    8: "Metal",
    9: "VPI",
    10: "ROCm",
    11: "ROCm host",
    12: "ext_dev",
    13: "CUDA managed",
    14: "oneAPI",
    15: "WebGPU",
    16: "Hexagon",
    17: "MAIA",
}


def _wrapped(array, op: str) -> Tensor:
    """`array` as a leaf tensor without a copy, or a TypeError naming a dtype tinynorm lacks."""
    if array.dtype.kind not in KINDS:
        raise TypeError(
            f"{op}: dtype {array.dtype} is not supported (tinynorm holds bool, integer and "
            "floating-point tensors)"
        )
    return Tensor(array)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing `array`'s memory (PyTorch's `torch.from_numpy`): a write through either
    is seen by both; dtype, shape and strides kept; requires_grad=False."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(array).__name__}")
    return _wrapped(array, "from_numpy")


def from_dlpack(obj: Any) -> Tensor:
    """A tensor sharing the memory of any DLPack producer (a PyTorch or JAX tensor, a NumPy or
    CuPy array): CPU memory becomes a NumPy-backed tensor, CUDA memory a CuPy-backed one (CuPy
    needed). dtype, shape and strides kept; requires_grad=False, as in PyTorch. The producer
    decides what it exports: PyTorch refuses a tensor that requires grad (detach it first),
    NumPy has no bfloat16."""
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TypeError(
            "from_dlpack expects an object with __dlpack__ and __dlpack_device__ (a NumPy, "
            f"CuPy, PyTorch or JAX array), got {type(obj).__name__}"
        )
    device = int(obj.__dlpack_device__()[0])
    if device == DLPACK_CPU:
        importer = np.from_dlpack
    elif device == DLPACK_CUDA:
        importer = backend.cupy_or_error().from_dlpack
    else:
        name = DLPACK_DEVICES.get(device, "unknown")
        raise ValueError(
            f"from_dlpack: memory on DLPack device type {device} ({name}) is not supported: "
            "tinynorm runs on the CPU and on CUDA GPUs"
        )
    try:
        array = importer(obj)
    except (BufferError, TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"from_dlpack: could not take this {type(obj).__name__}: {err}") from err
    return _wrapped(array, "from_dlpack")
