"""The autograd engine: `Function` (an op's forward and backward side by side) and `backward`.

Every differentiable op is a `Function` subclass working on plain arrays (NumPy or CuPy):

    class Mul(Function):
        def forward(self, a, b):
            self.a, self.b = a, b          # keep what the backward pass needs
            return a * b
        def backward(self, grad):
            return grad * self.b, grad * self.a   # one gradient per input

`Mul.apply(x, y)` runs `forward` on the tensors' arrays and, when a gradient is wanted, links
the result to its inputs. The same mechanism serves fused ops: a `Function` whose forward and
backward are closed forms computed by a few array operations (conv2d as columns + GEMMs,
cross_entropy) or by Numba kernels (every norm layer) is an op like any other: one node in the
graph, never autograd through a chain of small elementwise ops.

`backward(root)` walks that graph once in reverse topological order, sums the gradients that
reach a tensor along several paths, undoes broadcasting, and accumulates into the leaves' `.grad`.
Unless asked to retain the graph, it then frees each op's saved arrays and links (`release`), so
the memory goes back at once; a second backward through a freed op is an error, as in PyTorch.

`profiling(profiler)` is the engine's profiling hook: while its block runs, each op's `forward`
and `backward` run through the profiler (`tinynorm.profiler`); outside it nothing is timed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager and decorator: ops inside record no graph (inference, optimizer steps)."""

    def _recreate_cm(self):  # a fresh instance per decorated call, so nesting and recursion work
        return type(self)()

    def __enter__(self):
        self.previous = is_grad_enabled()
        _state.enabled = False

    def __exit__(self, *exc):
        _state.enabled = self.previous


class enable_grad(no_grad):
    """Turns graph recording back on inside a `no_grad` block."""

    def __enter__(self):
        self.previous = is_grad_enabled()
        _state.enabled = True


_profiler = None  # the active profiler (`profiling`); None: the engine times nothing


@contextlib.contextmanager
def profiling(profiler) -> Iterator[None]:
    """The engine's profiling hook: while the block runs, `Function.apply` runs each op's
    forward as `profiler.call(op_name, "forward", fn.forward, *arrays, **params)` and
    `backward()` each op's backward as `profiler.call(op_name, "backward", fn.backward, grad)`
    (`tinynorm.profiler.Profiler` times them). Blocks do not nest."""
    global _profiler
    if _profiler is not None:
        raise RuntimeError("profile() blocks do not nest: one is already active")
    _profiler = profiler
    try:
        yield
    finally:
        _profiler = None


class Function:
    """Base class of every op. Subclasses define `forward(*arrays, **params)` -> array and
    `backward(grad)` -> one gradient (array or None) per input, or a single array for one input.

    `self.needs_input_grad[i]` tells whether input i wants a gradient, so an op can skip work
    nobody will use.
    """

    inputs: tuple
    needs_input_grad: tuple[bool, ...]
    freed = False  # set by `release`

    def forward(self, *arrays, **params):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    def describe(self) -> str:
        """A line about this application for a drawn graph (`tinynorm.viz`): what a fused op
        computed beyond its name, such as the statistics a norm pooled; "" by default."""
        return ""

    def release(self) -> None:
        """Drop everything `forward` saved, and the links to the inputs, after a backward pass
        that does not retain the graph."""
        vars(self).clear()
        self.freed = True

    @classmethod
    def apply(cls, *inputs: Tensor, **params) -> Tensor:
        """Run the op on Tensors (None for an absent optional input, such as a bias); keyword
        `params` (shapes, flags, integer labels) pass through to `forward`."""
        fn = cls()
        fn.needs_input_grad = tuple(t is not None and t.requires_grad for t in inputs)
        arrays = (None if t is None else t.data for t in inputs)
        profiler = _profiler
        if profiler is None:
            out = fn.forward(*arrays, **params)
        else:
            out = profiler.call(cls.__name__, "forward", fn.forward, *arrays, **params)
        if any(fn.needs_input_grad) and is_grad_enabled():
            fn.inputs = inputs
            return Tensor(out, requires_grad=True, _fn=fn)
        return Tensor(out)


def unbroadcast(grad, shape: tuple[int, ...]):
    """Sum `grad` over the axes that broadcasting added or stretched, so it has `shape`."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1)
    return grad.sum(axis=tuple(range(lead)) + stretched, keepdims=True).reshape(shape)


def topological_order(root: Tensor, every_input: bool = False) -> list[Tensor]:
    """Tensors that need a gradient (with `every_input`, every tensor an op read), each after
    all the tensors it was computed from (an iterative depth-first search, so deep graphs do not
    hit the recursion limit)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._fn is not None and not node._fn.freed:
            stack.extend(
                (p, False)
                for p in node._fn.inputs
                if p is not None and (every_input or p.requires_grad) and id(p) not in visited
            )
    return order


def backward(root: Tensor, grad, retain_graph: bool = False) -> None:
    """Propagate `grad` (an array shaped like `root`) back to every leaf that requires grad;
    then, unless `retain_graph`, release every op it went through."""
    order = topological_order(root)
    if any(node._fn is not None and node._fn.freed for node in order):
        raise RuntimeError(
            "Trying to backward through the graph a second time: the first backward() freed "
            "what its ops saved. Specify retain_graph=True in that first call to backward "
            "through the graph again."
        )
    grads = {id(root): grad}
    for node in reversed(order):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        fn = node._fn
        if fn is None:
            node._accumulate_grad(g)
            continue
        profiler = _profiler
        if profiler is None:
            parent_grads = fn.backward(g)
        else:
            parent_grads = profiler.call(type(fn).__name__, "backward", fn.backward, g)
        if not isinstance(parent_grads, tuple):
            parent_grads = (parent_grads,)
        for parent, pg in zip(fn.inputs, parent_grads):
            if pg is None or parent is None or not parent.requires_grad:
                continue
            pg = unbroadcast(pg, parent.data.shape)
            key = id(parent)
            grads[key] = grads[key] + pg if key in grads else pg
        if not retain_graph:
            fn.release()


from .tensor import Tensor  # noqa: E402  (last: tensor.py imports this module in turn)
