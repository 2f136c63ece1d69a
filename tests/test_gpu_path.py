"""The GPU code path of a whole training step, without a GPU.

Every kernel call is routed to the CUDA kernels (`kernels/cuda.py`, Numba's simulator here, a GPU
where there is one) with NumPy as the array module, so everything but CuPy itself runs as on a
GPU: the dispatch layer, the composed GPU paths, the two-stage reductions and every launch
configuration. Loss and every parameter gradient of a small CNN must match the CPU kernels', for
each normalization of the main job (every variant of `tinynorm.variants` with a --norm name).
"""

import numpy as np
import pytest
from tinynorm.examples.mnist import NORMS, norm_layer

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.nn.utils import weight_norm
from tinynorm.variants import BY_KEY


def small_cnn(kind: str) -> nn.Sequential:
    """conv 3×3 → norm → ReLU → max-pool → linear, for (N, 2, 5, 3) inputs: odd sizes, so no
    launch covers a whole number of blocks (small: the simulator runs a Python thread per CUDA
    thread)."""
    conv, head = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 2 * 1, 5)
    if kind == "wn":
        weight_norm(conv)
    if kind in BY_KEY:  # built for the 5 × 3 map (the main job's maps are square)
        norm = BY_KEY[kind].make(nn, (2, 4, 5, 3))
    else:
        norm = norm_layer(kind, 4, 5, total_steps=10)
    return nn.Sequential(conv, norm, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), head)


def loss_and_grads(kind: str, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    tn.manual_seed(0)
    model = small_cnn(kind).double()
    loss = F.cross_entropy(model(tn.tensor(x)), tn.tensor(y))
    loss.backward()
    return [loss.numpy()] + [p.grad.numpy() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("kind", NORMS)
def test_training_step_on_the_cuda_kernels_matches_cpu(rng, simulate_gpu, kind):
    x, y = rng.standard_normal((2, 2, 5, 3)), rng.integers(0, 5, 2)
    on_cpu = loss_and_grads(kind, x, y)
    launched = simulate_gpu()  # every dispatch to the GPU module: no pass on the CPU's
    on_gpu = loss_and_grads(kind, x, y)
    assert len(launched) >= 4  # at least im2col and max pooling, forward and backward
    assert len(on_gpu) == len(on_cpu) > 2
    for actual, expected in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", ["BatchNorm1d", "BatchRenorm1d"])
def test_an_n_by_c_batch_norm_on_the_cuda_kernels_matches_cpu(rng, simulate_gpu, layer):
    """(N, C) inputs: the CPU's column kernels against the runs layout a GPU takes (batch
    renorm with its limits in force from the first step)."""
    x, g = rng.standard_normal((3, 2)) * 2 + 1, rng.standard_normal((3, 2))

    def step() -> list[np.ndarray]:
        kwargs = {"warmup_steps": 0, "rmax_steps": 0, "dmax_steps": 0} if "Renorm" in layer else {}
        norm = getattr(nn, layer)(2, **kwargs).double()
        t = tn.tensor(x, requires_grad=True)
        y = norm(t)
        y.backward(tn.tensor(g))
        return [y.numpy(), t.grad.numpy(), norm.weight.grad.numpy(), norm.bias.grad.numpy()] + [
            b.numpy() for b in norm.buffers() if b.dtype.kind == "f"
        ]

    on_cpu = step()
    launched = simulate_gpu()
    on_gpu = step()
    assert launched and len(on_gpu) == len(on_cpu) == 6
    for actual, expected in zip(on_gpu, on_cpu):
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
