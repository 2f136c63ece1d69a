"""Every CUDA kernel compiles to PTX for an H100/H200 (sm_90), without a GPU.

The simulator runs the kernels' Python, so a kernel that Numba's CUDA target cannot compile (a
device function it cannot call, a value it cannot type, a `*args` parameter, which a launch does
not fold into a tuple as the CPU's `@njit` does) passes every simulator test and fails on the
first real launch. Here each kernel is compiled by NVVM for the argument types of real calls, as
a launch types them: in a child process with the simulator off
(the tests run with it on), where `cuda._launch` compiles instead of launching. Skipped where
the CUDA toolkit's compilers (NVVM, NVRTC) are not installed.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ARCH = (9, 0)  # sm_90: H100, H200


def compile_every_kernel(dtype) -> list[str]:
    """Drive each CUDA kernel through its Python wrapper on NumPy arrays of `dtype`, compiling
    each launch to PTX for the types of its arguments; the kernels' names, in launch order."""
    import types

    import numba
    from numba import cuda
    from numba.cuda import dispatcher
    from tinynorm.kernels import cuda as kernels_cuda

    # device functions compile for the current device's architecture: there is none here
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=ARCH)

    compiled: dict[str, int] = {}

    def compile_launch(kernel, grid, *args):
        signature = tuple(numba.typeof(a) for a in args)  # as a launch types them
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=ARCH)
        assert ".entry" in ptx
        compiled[kernel.py_func.__name__] = len(ptx)

    kernels_cuda._launch = compile_launch
    rng = np.random.default_rng(0)
    N, C, S, k = 2, 4, 37, 2
    x, dy = (rng.standard_normal((N, C, S)).astype(dtype) for _ in range(2))
    w, rows = np.ones((C, S), dtype), np.ones((N, C), dtype)
    coefficient = np.ones((N, C))
    channels, stats = np.ones(C, dtype), (np.ones((1, C // k)), np.ones((1, C // k)))
    (mean, m2), chunk = kernels_cuda.moment_parts(x)
    kernels_cuda.grad_sum_parts(dy, x, rows, w)
    kernels_cuda.normalize(x, rows, rows, rows, w, w)
    kernels_cuda.combine(dy, x, stats[0], coefficient, coefficient, coefficient, w)
    kernels_cuda.column_grad_sums(dy, x, rows, rows)
    affine = (channels, channels, True, True)
    running = (channels, channels, 0.1, True, True)
    flat = tuple(np.ones(N * C, dtype) for _ in range(3))
    flags = (True, True, True)
    corrections = np.ones((2, C))
    renorm = (True, np.zeros(1, np.int64), 1.0, 2.0, 3.0, 3.0, 5.0, corrections)
    kernels_cuda.statistics(2, mean, m2, chunk, S, C, k, *flags, 1e-5, *affine, *running,
                            *renorm, *stats, *flat)  # fmt: skip
    out = (*(np.ones(N * C) for _ in range(3)), np.ones((1, C // k)), channels, channels)
    kernels_cuda.coefficients(C, mean, m2, C, k, *flags, stats[1], 8, channels, True, True,
                              corrections, *out)  # fmt: skip
    kernels_cuda.tlu_backward(dy, kernels_cuda.tlu(x, channels), channels)
    from tinynorm import kernels  # the mixtures through the dispatch layer, routed to CUDA

    kernels.is_cupy, kernels._impl = (lambda a: True), (lambda a: kernels_cuda)
    logits = (np.zeros(3, dtype), np.zeros(3, dtype))
    mixture = kernels.Mixture(has_ln=True, switchable=True, gate=channels, logits=logits)
    _, stats = kernels.normalize_mixture(x, 1e-5, channels, channels, mixture, running[:2] + (0.1,))
    kernels.combine_mixture(dy, x, stats, 1e-5, channels, mixture)
    images = rng.standard_normal((N, C, 6, 5)).astype(dtype)
    cols = np.empty((N, C, 3, 3, 6, 5), dtype)
    kernels_cuda.im2col(images, 3, 3, 1, 1, 1, 1, 6, 5, cols)
    kernels_cuda.col2im(cols, 1, 1, 1, 1, np.empty_like(images))
    y, arg = np.empty((N, C, 3, 2), dtype), np.empty((N, C, 3, 2), np.int8)
    kernels_cuda.max_pool(images, 2, 2, 2, 2, 0, 0, y, arg)
    kernels_cuda.max_pool_backward(y, arg, 2, 2, 2, 2, 0, 0, np.empty_like(images))
    return list(compiled)


def toolkit_available() -> bool:
    """Whether NVVM and NVRTC (the CUDA toolkit's compilers; Numba asks NVRTC which
    architectures exist) load here: from a CUDA toolkit, or from the nvidia-* wheels."""
    try:
        from numba.cuda.cudadrv import nvrtc, nvvm

        return nvvm.is_available() and bool(nvrtc.get_arch_option(*ARCH))
    except Exception:  # any failure to load a library means: not here
        return False


def test_every_cuda_kernel_compiles_for_sm90():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode == 3:
        pytest.skip("no CUDA toolkit compilers here (NVVM and NVRTC)")
    assert done.returncode == 0, done.stderr[-4000:]
    float32, float64 = done.stdout.splitlines()
    assert float32 == float64 and "_statistics" in float32 and "_max_pool" in float32


def every_kernel() -> set[str]:
    """The names of the `@cuda.jit` kernels (not device functions) of `kernels/cuda.py`."""
    from numba.cuda.dispatcher import CUDADispatcher
    from tinynorm.kernels import cuda as kernels_cuda

    return {
        name
        for name, value in vars(kernels_cuda).items()
        if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device")
    }


if __name__ == "__main__":
    if not toolkit_available():
        sys.exit(3)
    for dtype in (np.float32, np.float64):
        names = compile_every_kernel(dtype)
        missing = every_kernel() - set(names)
        if missing:
            sys.exit(f"not compiled (add a call to compile_every_kernel): {sorted(missing)}")
        print(*sorted(names))
