"""`gradcheck`: compare backward() with central finite differences, in float64.

For a random cotangent v (fixed seed), the analytic vector-Jacobian product ∂⟨v, f(x)⟩/∂x from
`backward(v)` must match (⟨v, f(x + εe_i)⟩ - ⟨v, f(x - εe_i)⟩) / 2ε for every element i of
every input that requires grad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from . import backend
from .autograd import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree."""


def _projected(fn, inputs, v) -> float:
    with no_grad():
        out = fn(*inputs)
    return float((out.numpy().astype(np.float64) * v).sum())


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> bool:
    """True when the gradients of `fn(*inputs)` match finite differences, else GradcheckError
    naming the input, the element and both values of the worst mismatch.

    Inputs that require grad must be float64. `fn` must be deterministic.
    """
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {inputs[i].dtype}")
        inputs[i].grad = None

    out = fn(*inputs)
    v = np.random.default_rng(0).standard_normal(out.shape)
    if out.requires_grad:
        out.backward(Tensor(backend.to_device(np.asarray(v, dtype=out.dtype), out.device)))

    for i in checked:
        x = inputs[i]
        analytic = np.zeros(x.shape) if x.grad is None else x.grad.numpy().astype(np.float64)
        numeric = np.empty(x.data.size)
        for k in range(x.data.size):
            at = np.unravel_index(k, x.shape)  # perturb the input in place, whatever its layout
            orig = x.data[at].item()
            x.data[at] = orig + eps
            plus = _projected(fn, inputs, v)
            x.data[at] = orig - eps
            minus = _projected(fn, inputs, v)
            x.data[at] = orig
            numeric[k] = (plus - minus) / (2 * eps)
        error = np.abs(analytic.reshape(-1) - numeric) - (atol + rtol * np.abs(numeric))
        worst = int(np.argmax(error)) if error.size else 0
        if error.size and error[worst] > 0:
            index = np.unravel_index(worst, x.shape)
            raise GradcheckError(
                f"gradcheck: input {i} (shape {x.shape}) at {tuple(map(int, index))}: "
                f"analytic {analytic.reshape(-1)[worst]:.8g} vs numerical {numeric[worst]:.8g}"
            )
    return True
