"""softmax, log_softmax and the fused, numerically stable cross-entropy loss.

All three subtract the row maximum before exponentiating, so no input overflows.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Function
from ..tensor import Tensor


def _log_softmax(x, axis):
    xp = backend.get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    """y = e^x / Σ e^x along `axis`; dx = y (dy - Σ dy·y)."""

    def forward(self, x, axis):
        xp = backend.get_array_module(x)
        self.axis = axis
        self.y = xp.exp(_log_softmax(x, axis))
        return self.y

    def backward(self, grad):
        return self.y * (grad - (grad * self.y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - log Σ e^x along `axis`; dx = dy - e^y Σ dy."""

    def forward(self, x, axis):
        self.axis = axis
        self.y = _log_softmax(x, axis)
        return self.y

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        return grad - xp.exp(self.y) * grad.sum(axis=self.axis, keepdims=True)


class CrossEntropy(Function):
    """Fused loss for logits (N, K) and labels (N,):
    L = -1/N Σ_n log softmax(x_n)[t_n];  dL/dx = (softmax(x) - onehot(t)) / N.
    With `poison_bad_labels` (the GPU path), a label outside [0, K) makes L NaN."""

    def forward(self, logits, target, poison_bad_labels: bool = False):
        xp = backend.get_array_module(logits)
        logp = _log_softmax(logits, axis=1)
        bad = None
        if poison_bad_labels:  # gather in bounds, and poison the loss
            bad = ((target < 0) | (target >= logits.shape[1])).any()
            target = xp.clip(target, 0, logits.shape[1] - 1)
        rows = xp.arange(len(target))
        self.p, self.rows, self.target = xp.exp(logp), rows, target
        loss = -logp[rows, target].mean()
        return loss if bad is None else xp.where(bad, xp.nan, loss).astype(loss.dtype)

    def backward(self, grad):
        dx = self.p.copy()
        dx[self.rows, self.target] -= 1
        return dx * (grad / len(self.target))


def softmax(x: Tensor, dim: int) -> Tensor:
    return Softmax.apply(x, axis=dim)


def log_softmax(x: Tensor, dim: int) -> Tensor:
    return LogSoftmax.apply(x, axis=dim)


def cross_entropy(logits: Tensor, target) -> Tensor:
    """Mean cross-entropy of `logits` (N, K) against integer class indices `target` (N,).
    A class index outside [0, K) raises IndexError on the CPU; on a GPU it makes the loss NaN
    (raising would need the labels on the host at every step)."""
    labels = target.data if isinstance(target, Tensor) else target
    xp = backend.get_array_module(logits.data)
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy expects integer class indices as target, got dtype {labels.dtype}"
        )
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy expects logits (N, K) and target (N,), "
            f"got {logits.shape} and {labels.shape}"
        )
    on_gpu = backend.is_cupy(labels)
    if labels.size and not on_gpu:  # on a GPU this check would read the labels back every step
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= logits.shape[1]:
            bad = low if low < 0 else high
            raise IndexError(
                f"cross_entropy: class index {bad} is out of range for {logits.shape[1]} classes"
            )
    target = labels.astype(np.intp, copy=False)
    return CrossEntropy.apply(logits, target=target, poison_bad_labels=on_gpu)
