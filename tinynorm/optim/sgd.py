"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, Params


class SGD(Optimizer):
    """PyTorch's SGD. With weight decay λ, momentum μ, dampening τ and learning rate η:

        g ← ∇p + λ·p
        b ← g on the first step, then b ← μ·b + (1 − τ)·g      (only when μ ≠ 0)
        g ← g + μ·b with Nesterov, otherwise g ← b
        p ← p − η·g

    The buffer b is the parameter's `state["momentum_buffer"]`.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        if not group["momentum"] >= 0.0:
            raise ValueError(f"invalid momentum: {group['momentum']} (must be >= 0)")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")

    def _update(self, p, g, group: dict[str, Any], state: dict[str, Any]) -> None:
        lr, momentum, dampening, weight_decay = (
            float(group[k]) for k in ("lr", "momentum", "dampening", "weight_decay")
        )
        if weight_decay != 0:
            g = g + weight_decay * p  # a new array: the gradient itself is never modified
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p -= lr * g
