"""Where one tinynorm training step spends its time, by category (`breakdown`); used by
`bench/train.py` in a tinynorm-only process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import tinynorm as tn
from tinynorm.nn import normalization as norm_layers
from tinynorm.nn.module import Module, RemovableHandle
from tinynorm.profiler import profile, record_function

CATEGORIES = ("conv", "norm", "pooling", "activation", "loss", "linear", "other ops", "optimizer")
BOOKKEEPING = "autograd bookkeeping"

# by the name of the op (the Function subclass), as the profiler reports it; others: "other ops"
OP_CATEGORY: dict[str, str] = {
    "Conv2d": "conv",
    "Normalize": "norm",
    "MixedNormalize": "norm",
    "ThresholdedLinearUnit": "activation",  # FRN's TLU
    "WeightNorm": "norm",
    "Empty": "norm",  # a norm of an input without values
    "MaxPool2d": "pooling",
    "AvgPool2d": "pooling",
    "ReLU": "activation",
    "CrossEntropy": "loss",
    "Linear": "linear",
    "MatMul": "linear",
}


def hook_norm_layers(model: Module) -> list[RemovableHandle]:
    """Time each norm layer's forward in `model` as a range "norm:<its class>"; the handles
    take the hooks out."""
    opened: list[contextlib.AbstractContextManager] = []

    def enter(layer: Module, args: tuple) -> None:
        opened.append(record_function(f"norm:{type(layer).__name__}"))
        opened[-1].__enter__()

    def leave(layer: Module, args: tuple, out: tn.Tensor) -> None:
        opened.pop().__exit__(None, None, None)

    handles = []
    for layer in model.modules():
        if type(layer).__module__ == norm_layers.__name__:
            handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    return handles


def train_step(loss_of_batch: Callable[[], tn.Tensor], optimizer: tn.optim.Optimizer) -> float:
    """One training step: the loss, zero_grad, backward and the optimizer's step; the loss.
    The optimizer's two calls are ranges "optimizer:<class>.zero_grad" and ".step" (recorded
    when a profile is open)."""
    loss = loss_of_batch()
    name = type(optimizer).__name__
    with record_function(f"optimizer:{name}.zero_grad"):
        optimizer.zero_grad()
    loss.backward()
    with record_function(f"optimizer:{name}.step"):
        optimizer.step()
    return loss.item()


def breakdown(
    loss_of_batch: Callable[[], tn.Tensor],
    model: Module,
    optimizer: tn.optim.Optimizer,
    repeat: int,
) -> list[dict]:
    """Rows of milliseconds and % of the step per category, averaged over `repeat` training
    steps (`train_step`) of `model` whose loss `loss_of_batch` computes, from a
    `tinynorm.profiler.profile()` block.

    Each op's forward and backward count in its category (`OP_CATEGORY`, by the op's name
    alone: a reshape that a norm layer runs counts in "other ops"). The ranges' own time (less
    the ops inside) counts in the category their name starts with: the norm layers' Python
    work around their fused op (batch statistics, running estimates), timed by the modules'
    hooks (`hook_norm_layers`), and the optimizer's `zero_grad` and `step`. Everything else in
    the step is autograd bookkeeping."""
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    names: dict[str, set[str]] = {c: set() for c in CATEGORIES}
    with profile() as prof:
        handles = hook_norm_layers(model)
        try:
            start = time.perf_counter()
            for _ in range(repeat):
                train_step(loss_of_batch, optimizer)
            total = (time.perf_counter() - start) / repeat
        finally:
            for handle in handles:
                handle.remove()
    parts = [(OP_CATEGORY.get(r["op"], "other ops"), r["op"], r["seconds"]) for r in prof.rows()]
    parts += [(*r["name"].split(":", 1), r["self_seconds"]) for r in prof.ranges()]
    for category, name, s in parts:
        seconds[category] += s / repeat
        names[category].add(name)
    seconds[BOOKKEEPING] = total - sum(seconds.values())
    return [
        {
            "category": category,
            "ms": 1e3 * s,
            "percent": 100 * s / total,
            "timed": sorted(names.get(category, ())),
        }
        for category, s in seconds.items()
    ]
