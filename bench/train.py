"""One training step of the main job's MNIST CNN on the CPU: tinynorm against PyTorch, and
where tinynorm's time goes.

    python bench/train.py [--norm bn] [--threads 2] [--repeat 20] [--batch-size 128]
                          [--quick] [--no-torch] [--json PATH]

The model is `build_model` of `python -m tinynorm.examples.mnist` (conv → norm → ReLU → pool,
twice, then a linear classifier; default width), float32, trained as the main job trains it:
cross-entropy loss, SGD with Nesterov momentum 0.9, lr 0.02 and weight decay 5e-4. One step
is forward, loss, zero_grad, backward and the optimizer step, on a fixed random batch of MNIST
shape (N, 1, 28, 28) with random labels.

The first table gives the median step time, images per second and the time as a ratio to
PyTorch's: the same architecture built from `torch.nn`, with tinynorm's initial weights copied
in through its state_dict, the same data and optimizer settings, on the same thread count
(when PyTorch is installed, and for the norms PyTorch has: bn, ln, in, gn, none). The loss of
the first step of each shows that both compute the same function.

The second table splits one tinynorm step into categories, timed over `--repeat` steps by
wrapping the ops' methods (see `StepProfile`): conv, norm, pooling, activation, loss, linear,
other ops (reshapes), optimizer (zero_grad + step), and autograd bookkeeping — the rest: the
modules' calls, building the graph, the topological walk and the accumulation of gradients.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import common

CATEGORIES = ("conv", "norm", "pooling", "activation", "loss", "linear", "other ops", "optimizer")
BOOKKEEPING = "autograd bookkeeping"
TORCH_NORMS = ("bn", "ln", "in", "gn", "none")  # the --norm choices with a torch.nn counterpart
TOTAL_STEPS = 469  # the length of the norms' schedules (batch renorm): one epoch of MNIST at 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, repeat=20)
    parser.add_argument(
        "--norm", default="bn", help="the main job's --norm (bn, ln, gn, in, none, ...; default bn)"
    )
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    return parser.parse_args(argv)


ARGS = parse_args()
common.set_threads(ARGS.threads)

import numpy as np  # noqa: E402  (after set_threads)
from tinynorm.examples.mnist import NORMS, build_model  # noqa: E402

import tinynorm as tn  # noqa: E402
import tinynorm.nn.functional as F  # noqa: E402
from tinynorm.autograd import Function  # noqa: E402
from tinynorm.nn import normalization as norm_layers  # noqa: E402
from tinynorm.nn.module import Module  # noqa: E402
from tinynorm.ops.conv import Conv2d  # noqa: E402
from tinynorm.ops.elementwise import ReLU  # noqa: E402
from tinynorm.ops.matmul import Linear, MatMul  # noqa: E402
from tinynorm.ops.norm import Normalize, NormalizeRuns  # noqa: E402
from tinynorm.ops.norm_mixed import MixedNormalize, SwitchableNormalize  # noqa: E402
from tinynorm.ops.pool import AvgPool2d, MaxPool2d  # noqa: E402
from tinynorm.ops.softmax import CrossEntropy  # noqa: E402
from tinynorm.ops.weight_norm import WeightNorm  # noqa: E402

torch = common.import_torch(ARGS.threads, enabled=not ARGS.no_torch)

REPEAT = 3 if ARGS.quick else ARGS.repeat
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 5e-4  # the main job's SGD

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


def tinynorm_step(batch: tuple[np.ndarray, np.ndarray]) -> tuple[Callable, Module, Any]:
    """(step, model, optimizer) for a fresh tinynorm model; `step()` returns the loss."""
    tn.manual_seed(0)
    model = build_model(ARGS.norm, TOTAL_STEPS)
    opt = tn.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    x, y = tn.tensor(batch[0]), tn.tensor(batch[1])

    def step() -> float:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step, model, opt


def torch_model(width: int) -> Any:
    """The main job's CNN in `torch.nn` (layer indices as in `build_model`, so that its
    state_dict loads), for the norms in TORCH_NORMS."""
    nn = torch.nn

    def norm_layer(channels: int, size: int) -> Any:
        return {
            "bn": lambda: nn.BatchNorm2d(channels),
            "ln": lambda: nn.LayerNorm((channels, size, size)),
            "in": lambda: nn.InstanceNorm2d(channels, affine=True),
            "gn": lambda: nn.GroupNorm(4, channels),
            "none": nn.Identity,
        }[ARGS.norm]()

    return nn.Sequential(
        nn.Conv2d(1, width, 5, padding=2),
        norm_layer(width, 28),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 5, padding=2),
        norm_layer(2 * width, 14),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, 10),
    )


def torch_step(batch: tuple[np.ndarray, np.ndarray], state: dict[str, np.ndarray]) -> Callable:
    """`step()` for the PyTorch model, initialized from tinynorm's `state` (a state_dict)."""
    model = torch_model(width=state["0.weight"].shape[0])
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
    opt = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    x, y = torch.from_numpy(batch[0]), torch.from_numpy(batch[1])

    def step() -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_skipped() -> str | None:
    """Why this run has no PyTorch comparison, or None when it has one."""
    if ARGS.no_torch:
        return "--no-torch"
    if torch is None:
        return "PyTorch is not installed"
    if ARGS.norm not in TORCH_NORMS:
        return f"torch.nn has no counterpart of --norm {ARGS.norm}"
    return None


def throughput(step: Callable, framework: str) -> dict:
    """The first step's loss, then the median step time over REPEAT steps."""
    first_loss = step()
    seconds = common.median_time(step, REPEAT)
    return {
        "table": "step",
        "framework": framework,
        "step_ms": 1e3 * seconds,
        "images_per_s": ARGS.batch_size / seconds,
        "first_loss": first_loss,
    }


def breakdown(step: Callable, opt: tn.optim.Optimizer) -> list[dict]:
    """Rows of milliseconds and % of the step per category, averaged over REPEAT steps."""
    with StepProfile(opt) as profile:
        start = time.perf_counter()
        for _ in range(REPEAT):
            step()
        total = (time.perf_counter() - start) / REPEAT
    seconds = {c: s / REPEAT for c, s in profile.seconds.items()}
    seconds[BOOKKEEPING] = total - sum(seconds.values())
    return [
        {
            "table": "breakdown",
            "category": category,
            "ms": 1e3 * s,
            "percent": 100 * s / total,
            "timed": sorted(profile.names.get(category, ())),
        }
        for category, s in seconds.items()
    ]


def main() -> int:
    if ARGS.norm not in NORMS:
        raise SystemExit(f"--norm must be one of {', '.join(NORMS)}")
    rng = np.random.default_rng(0)
    batch = (
        rng.standard_normal((ARGS.batch_size, 1, 28, 28)).astype(np.float32),
        rng.integers(0, 10, ARGS.batch_size),
    )
    step, model, opt = tinynorm_step(batch)
    initial_state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    rows = [throughput(step, "tinynorm")]
    if not torch_skipped():
        rows.append(throughput(torch_step(batch, initial_state), "torch"))
        rows[0]["ratio_to_torch"] = rows[0]["step_ms"] / rows[1]["step_ms"]
        rows[1]["ratio_to_torch"] = 1.0
    rows += breakdown(step, opt)

    info = common.machine(ARGS.threads)
    print(common.describe(info))
    print(format_tables(rows))
    if ARGS.json:
        common.write_json(
            ARGS.json,
            info,
            rows,
            norm=ARGS.norm,
            batch_size=ARGS.batch_size,
            repeat=REPEAT,
            quick=ARGS.quick,
            torch_skipped=torch_skipped(),
        )
    return 0


def format_tables(rows: list[dict]) -> str:
    """The two Markdown tables, with a title line each."""
    steps = [r for r in rows if r["table"] == "step"]
    parts = [r for r in rows if r["table"] == "breakdown"]
    note = f" (no PyTorch comparison: {torch_skipped()})" if torch_skipped() else ""
    step_table = common.markdown_table(
        ["framework", "step ms", "images/s", "ratio to torch", "first-step loss"],
        [
            [
                r["framework"],
                common.cell(r["step_ms"]),
                common.cell(r["images_per_s"], ".0f"),
                common.cell(r.get("ratio_to_torch")),
                common.cell(r["first_loss"], ".4f"),
            ]
            for r in steps
        ],
    )
    total_ms = sum(r["ms"] for r in parts)
    part_table = common.markdown_table(
        ["category", "timed calls", "ms", "% of step"],
        [
            [
                r["category"],
                ", ".join(r["timed"]),
                common.cell(r["ms"]),
                common.cell(r["percent"], ".1f"),
            ]
            for r in parts
        ]
        + [["step (profiled)", "", common.cell(total_ms), "100.0"]],
        left=2,
    )
    title = f"MNIST CNN, --norm {ARGS.norm}, batch {ARGS.batch_size}, float32, median of {REPEAT}"
    return (
        f"\n{title}{note}\n\n{step_table}\n\n"
        f"One tinynorm step by category (mean of {REPEAT} profiled steps)\n\n{part_table}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
