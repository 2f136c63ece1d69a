"""Numba kernels (`@njit` for NumPy arrays, `@cuda.jit` for CuPy arrays).

Plain arrays in, plain arrays out: nothing in this package imports the autograd engine.
"""
