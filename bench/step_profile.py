"""Where one tinynorm training step spends its time, by category (`StepProfile`); used by
`bench/train.py` in a tinynorm-only process."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import tinynorm as tn
from tinynorm.autograd import Function
from tinynorm.nn import normalization as norm_layers
from tinynorm.nn.module import Module
from tinynorm.ops.conv import Conv2d
from tinynorm.ops.elementwise import ReLU
from tinynorm.ops.matmul import Linear, MatMul
from tinynorm.ops.norm import Normalize, NormalizeRuns
from tinynorm.ops.norm_mixed import MixedNormalize, SwitchableNormalize
from tinynorm.ops.pool import AvgPool2d, MaxPool2d
from tinynorm.ops.softmax import CrossEntropy
from tinynorm.ops.weight_norm import WeightNorm

CATEGORIES = ("conv", "norm", "pooling", "activation", "loss", "linear", "other ops", "optimizer")
BOOKKEEPING = "autograd bookkeeping"


OP_CATEGORY: dict[type[Function], str] = {
    Conv2d: "conv",
    Normalize: "norm",
    NormalizeRuns: "norm",
    MixedNormalize: "norm",
    SwitchableNormalize: "norm",
    WeightNorm: "norm",
    MaxPool2d: "pooling",
    AvgPool2d: "pooling",
    ReLU: "activation",
    CrossEntropy: "loss",
    Linear: "linear",
    MatMul: "linear",
}


def op_category(op: type[Function]) -> str:
    """The category of an op class (through its base classes), "other ops" when unlisted."""
    return next((OP_CATEGORY[c] for c in op.__mro__ if c in OP_CATEGORY), "other ops")


def subclasses(cls: type) -> Iterator[type]:
    """Every subclass of `cls`, recursively."""
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


_MISSING = object()


class StepProfile:
    """Wall time per category while active (a context manager), by wrapping methods.

    Wrapped: `forward` and `backward` of every `Function` subclass (their category from
    `OP_CATEGORY`), the whole `forward` of the norm layers (they compute their batch
    statistics and update their running estimates before calling their fused op, so all of
    it counts as norm), and the optimizer's `zero_grad` and `step`. Only the outermost wrapped
    call is timed, so an op run inside a norm layer's forward counts as norm; and the backward
    of a node counts in the category its forward counted in. Everything else in the step is
    autograd bookkeeping. The wrappers cost about a microsecond per call, which lands there.
    """

    def __init__(self, optimizer: tn.optim.Optimizer):
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.names: dict[str, set[str]] = {c: set() for c in CATEGORIES}
        self._optimizer = optimizer
        self._active: str | None = None
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> StepProfile:
        for op in subclasses(Function):
            if "forward" in vars(op):
                self._patch(op, "forward", self._op_forward(op.forward, op))
            if "backward" in vars(op):
                self._patch(op, "backward", self._op_backward(op.backward, op))
        for layer in vars(norm_layers).values():
            if (
                isinstance(layer, type)
                and issubclass(layer, Module)
                and layer.__module__ == norm_layers.__name__
                and "forward" in vars(layer)
            ):
                self._patch(layer, "forward", self._layer_forward(layer.forward))
        for name in ("zero_grad", "step"):
            self._patch(self._optimizer, name, self._optimizer_method(name))
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    def _patch(self, owner: Any, name: str, replacement: Callable) -> None:
        self._saved.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, replacement)

    def _run(self, category: str, name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Call `fn`, adding its time to `category` unless a timed call encloses it."""
        if self._active is not None:
            return fn(*args, **kwargs)
        self._active = category
        self.names[category].add(name)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[category] += time.perf_counter() - start
            self._active = None

    def _layer_forward(self, forward: Callable) -> Callable:
        @functools.wraps(forward)
        def timed(layer: Module, *args: Any, **kwargs: Any) -> Any:
            return self._run("norm", type(layer).__name__, forward, layer, *args, **kwargs)

        return timed

    def _optimizer_method(self, name: str) -> Callable:
        method = getattr(self._optimizer, name)
        label = f"{type(self._optimizer).__name__}.{name}"

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            return self._run("optimizer", label, method, *args, **kwargs)

        return timed

    def _op_forward(self, forward: Callable, op: type[Function]) -> Callable:
        category = op_category(op)

        @functools.wraps(forward)
        def timed(fn: Function, *args: Any, **kwargs: Any) -> Any:
            fn.bench_category = self._active or category  # where its backward will count
            return self._run(fn.bench_category, type(fn).__name__, forward, fn, *args, **kwargs)

        return timed

    def _op_backward(self, backward: Callable, op: type[Function]) -> Callable:
        category = op_category(op)

        @functools.wraps(backward)
        def timed(fn: Function, grad: Any) -> Any:
            owner = getattr(fn, "bench_category", category)
            return self._run(owner, type(fn).__name__, backward, fn, grad)

        return timed


def breakdown(step: Callable[[], Any], optimizer: tn.optim.Optimizer, repeat: int) -> list[dict]:
    """Rows of milliseconds and % of the step per category, averaged over `repeat` steps."""
    with StepProfile(optimizer) as profile:
        start = time.perf_counter()
        for _ in range(repeat):
            step()
        total = (time.perf_counter() - start) / repeat
    seconds = {c: s / repeat for c, s in profile.seconds.items()}
    seconds[BOOKKEEPING] = total - sum(seconds.values())
    return [
        {
            "category": category,
            "ms": 1e3 * s,
            "percent": 100 * s / total,
            "timed": sorted(profile.names.get(category, ())),
        }
        for category, s in seconds.items()
    ]
