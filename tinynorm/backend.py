"""Backends: the array module follows the data (NumPy on the CPU, CuPy on the GPU).

Nothing here imports CuPy until a CuPy array or the device "cuda" is actually met, so a
CPU-only machine never pays for it and never fails because of it. `is_cupy` and
`get_array_module` are the kernels' own (`tinynorm.kernels`, which loads without tinynorm).
"""

from __future__ import annotations

import types

from .kernels import get_array_module, is_cupy

DEVICES = ("cpu", "cuda")
__all__ = [
    "DEVICES",
    "check_device",
    "cupy_or_error",
    "device_of",
    "get_array_module",
    "is_cupy",
    "to_device",
]


def cupy_or_error() -> types.ModuleType:
    """Import CuPy for the device "cuda", or raise an error that says what is missing."""
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            "device 'cuda' needs CuPy, which is not installed: pip install 'tinynorm[gpu]'"
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy raises its own CUDARuntimeError when no driver is present
        raise RuntimeError(f"device 'cuda' asked for, but no CUDA GPU is usable: {err}") from err
    if count == 0:
        raise RuntimeError("device 'cuda' asked for, but no CUDA GPU was found")
    return cupy


def check_device(device: str) -> str:
    """Normalize a device name ("cpu", "cuda", "cuda:0") or raise naming the bad one."""
    name = str(device).split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return name


def device_of(array) -> str:
    return "cuda" if is_cupy(array) else "cpu"


def to_device(array, device: str):
    """The same values on `device`; no copy when they are there already."""
    device = check_device(device)
    if device == device_of(array):
        return array
    if device == "cpu":
        return array.get()
    return cupy_or_error().asarray(array)
