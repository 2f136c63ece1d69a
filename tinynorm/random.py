"""One seeded random generator per backend, so the same seed gives the same numbers."""

from __future__ import annotations

import numpy as np

from . import backend

_seed = 0
_generators: dict[str, object] = {}


def manual_seed(seed: int) -> None:
    """Seed every random draw tinynorm makes (initialization, dropout, shuffling)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(xp=np):
    """The generator of the array module `xp` (NumPy's or CuPy's), created on first use."""
    key = xp.__name__
    if key not in _generators:
        _generators[key] = xp.random.default_rng(_seed)
    return _generators[key]


def generator_for(array):
    """The generator of the backend that holds `array`."""
    return generator(backend.get_array_module(array))
