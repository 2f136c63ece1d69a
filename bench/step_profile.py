"""Where one tinynorm training step spends its time, by category (`breakdown`); used by
`bench/train.py` in a tinynorm-only process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import tinynorm as tn
from tinynorm.autograd import Profiler
from tinynorm.nn import normalization as norm_layers
from tinynorm.nn.module import Module, RemovableHandle

CATEGORIES = ("conv", "norm", "pooling", "activation", "loss", "linear", "other ops", "optimizer")
BOOKKEEPING = "autograd bookkeeping"

# by the name of the op (the Function subclass), as the profiler reports it; others: "other ops"
OP_CATEGORY: dict[str, str] = {
    "Conv2d": "conv",
    "Normalize": "norm",
    "MixedNormalize": "norm",
    "SwitchableNormalize": "norm",
    "WeightNorm": "norm",
    "Empty": "norm",  # a norm of an input without values
    "MaxPool2d": "pooling",
    "AvgPool2d": "pooling",
    "ReLU": "activation",
    "CrossEntropy": "loss",
    "Linear": "linear",
    "MatMul": "linear",
}


class StepProfile:
    """Wall time per category of the training steps run in a `tinynorm.profile()` block.

    The ops come from that block, the engine's profiling hook: the forward and the backward of
    each op count in its category (`OP_CATEGORY`, by the op's name alone: a reshape that a
    norm layer runs counts in "other ops"). Added to them (`part`): the norm layers' own
    Python work around their ops (they compute their batch statistics and update their running
    estimates before calling their fused op), timed by the modules' forward pre-hook and hook,
    as norm; and the optimizer's `zero_grad` and `step`, timed by `train_step`, as optimizer.
    The time of any op run inside a part is taken out of it, as it counts in the op's category
    already. Everything else in the step is autograd bookkeeping.
    """

    def __init__(self, ops: Profiler) -> None:
        self.ops = ops
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.names: dict[str, set[str]] = {c: set() for c in CATEGORIES}
        self._starts: list[tuple[float, float]] = []  # of the parts now running

    def start(self) -> None:
        """Begin a part: note the time and the ops' seconds so far."""
        self._starts.append((time.perf_counter(), sum(self.ops.seconds.values())))

    def stop(self, category: str, name: str) -> None:
        """Add the time since the matching `start`, less the ops run meanwhile, to `category`."""
        start, op_seconds = self._starts.pop()
        ops_inside = sum(self.ops.seconds.values()) - op_seconds
        self.seconds[category] += time.perf_counter() - start - ops_inside
        self.names[category].add(name)

    @contextlib.contextmanager
    def part(self, category: str, name: str) -> Iterator[None]:
        """Time the block as the part `name` of `category` (`start`, then `stop`)."""
        self.start()
        try:
            yield
        finally:
            self.stop(category, name)

    def hook_norm_layers(self, model: Module) -> list[RemovableHandle]:
        """Time each norm layer's forward in `model` as norm; the handles take the hooks out."""
        handles = []
        for layer in model.modules():
            if type(layer).__module__ == norm_layers.__name__:
                handles.append(layer.register_forward_pre_hook(lambda layer, args: self.start()))
                handles.append(
                    layer.register_forward_hook(
                        lambda layer, args, out: self.stop("norm", type(layer).__name__)
                    )
                )
        return handles

    def add_ops(self) -> None:
        """Add the ops' seconds from the profiler, each to its category."""
        for (op, _), seconds in self.ops.seconds.items():
            category = OP_CATEGORY.get(op, "other ops")
            self.seconds[category] += seconds
            self.names[category].add(op)


def train_step(
    loss_of_batch: Callable[[], tn.Tensor],
    optimizer: tn.optim.Optimizer,
    profile: StepProfile | None = None,
) -> float:
    """One training step: the loss, zero_grad, backward and the optimizer's step; the loss.
    With a `profile`, the optimizer's two calls are timed into it."""
    loss = loss_of_batch()
    name = type(optimizer).__name__
    part = profile.part if profile is not None else lambda category, name: contextlib.nullcontext()
    with part("optimizer", f"{name}.zero_grad"):
        optimizer.zero_grad()
    loss.backward()
    with part("optimizer", f"{name}.step"):
        optimizer.step()
    return loss.item()


def breakdown(
    loss_of_batch: Callable[[], tn.Tensor],
    model: Module,
    optimizer: tn.optim.Optimizer,
    repeat: int,
) -> list[dict]:
    """Rows of milliseconds and % of the step per category, averaged over `repeat` training
    steps (`train_step`) of `model` whose loss `loss_of_batch` computes."""
    with tn.profile() as ops:
        profile = StepProfile(ops)
        handles = profile.hook_norm_layers(model)
        try:
            start = time.perf_counter()
            for _ in range(repeat):
                train_step(loss_of_batch, optimizer, profile)
            total = (time.perf_counter() - start) / repeat
        finally:
            for handle in handles:
                handle.remove()
    profile.add_ops()
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
