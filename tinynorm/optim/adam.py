"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), which differ only in how
weight decay is applied."""

from __future__ import annotations

import math
from typing import Any

from .. import backend
from .optimizer import Optimizer, Params


class Adam(Optimizer):
    """PyTorch's Adam. With learning rate η, betas β1 and β2, weight decay λ, at step t:

        g ← ∇p + λ·p                        (L2 weight decay; AdamW decays p instead)
        m ← β1·m + (1 − β1)·g               (first moment)
        v ← β2·v + (1 − β2)·g²              (second moment; amsgrad keeps the running
                                             maximum of v and uses it in place of v below)
        p ← p − η/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)

    The divisions by 1 − βᵗ correct the bias of m and v, which start at zero.
    """

    decoupled_weight_decay = False

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        super()._check_hyperparameters(group)
        if not group["eps"] >= 0.0:
            raise ValueError(f"invalid eps: {group['eps']} (must be >= 0)")
        for i, beta in enumerate(group["betas"]):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"invalid beta at index {i}: {beta} (must be in [0, 1))")

    def _update(self, p, g, group: dict[str, Any], state: dict[str, Any]) -> None:
        xp = backend.get_array_module(p)
        lr, eps, weight_decay = (float(group[k]) for k in ("lr", "eps", "weight_decay"))
        beta1, beta2 = (float(beta) for beta in group["betas"])
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(p), exp_avg_sq=xp.zeros_like(p))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(p)
        state["step"] += 1
        if weight_decay != 0 and self.decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        elif weight_decay != 0:
            g = g + weight_decay * p  # a new array: the gradient itself is never modified
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        if group["amsgrad"]:
            v = xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        step_size = lr / (1 - beta1 ** state["step"])
        denom = xp.sqrt(v) / math.sqrt(1 - beta2 ** state["step"]) + eps
        p -= step_size * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay: p ← p·(1 − η·λ) before the Adam step, instead of
    adding λ·p to the gradient (so the decay is not rescaled by the adaptive denominator)."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)
