"""`Tensor`: an n-dimensional array (NumPy or CuPy) that remembers how it was computed.

A tensor made by an op keeps a link `_fn` to the `Function` that made it (which keeps its
inputs), so `loss.backward()` can walk the graph back to the leaves. The arithmetic below only
forwards to the ops in `tinynorm.ops`, where each op's forward and backward stand side by side.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from . import backend


def _default_dtype(array: np.ndarray) -> np.dtype:
    """PyTorch's rule for Python data: floats become float32, integers int64, bools stay bool."""
    if array.dtype.kind == "f":
        return np.dtype(np.float32)
    if array.dtype.kind in "iu":
        return np.dtype(np.int64)
    if array.dtype.kind == "b":
        return np.dtype(np.bool_)
    raise TypeError(f"cannot make a tensor from data of dtype {array.dtype}")


class RemovableHandle:
    """What registering a hook returns: `remove()` unregisters it."""

    def __init__(self, hooks: list, hook: Callable) -> None:
        self.hooks, self.hook = hooks, hook

    def remove(self) -> None:
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


class Tensor:
    """A NumPy or CuPy array with an optional gradient.

    `requires_grad=True` marks a leaf whose gradient `backward()` accumulates into `.grad`.
    """

    __slots__ = ("__weakref__", "_fn", "_grad_hooks", "data", "grad", "requires_grad")
    __array_priority__ = 1000  # `ndarray + Tensor` defers to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, _fn=None):
        if isinstance(data, np.generic):  # a NumPy scalar, e.g. from arr.sum(): keep its dtype
            data = np.asarray(data)
        elif not (isinstance(data, np.ndarray) or backend.is_cupy(data)):
            data = np.asarray(data)
            if not isinstance(data, np.ndarray) or data.dtype == object:
                raise TypeError(f"cannot make a tensor from {type(data).__name__}")
            data = data.astype(_default_dtype(data), copy=False)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got {data.dtype}")
        self.data = data
        self.requires_grad = requires_grad
        self.grad: Tensor | None = None
        self._fn = _fn

    # ---- properties -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._fn is None

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self):
        """The tensor's entries along the first axis, each a tensor (`self[i]`: differentiable)."""
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(
                f"the truth value of a tensor with {self.data.size} elements is ambiguous"
            )
        return bool(self.item())

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = "" if self.dtype == np.float32 else f", dtype={self.dtype}"
        extra += "" if self.device == "cpu" else f", device='{self.device}'"
        if self._fn is not None:
            extra += f", grad_fn=<{type(self._fn).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ---- array protocols: NumPy's and DLPack (`tinynorm.interop` brings arrays in) ----
    def __array__(self, dtype=None, copy: bool | None = None) -> np.ndarray:
        """`np.asarray(t)`, matplotlib, pandas: the data itself, no copy, unless `dtype`
        differs or `copy=True` (NumPy 2's rules: `copy=False` refuses a conversion that must
        copy). A CUDA tensor's data is not in host memory: `.cpu()` it first, as in PyTorch."""
        if self.device != "cpu":
            raise TypeError(
                f"can't convert a {self.device} tensor to a NumPy array: call .cpu() first to "
                "copy it to host memory"
            )
        array = self.data
        if dtype is not None and np.dtype(dtype) != array.dtype:
            if copy is False:
                raise ValueError(
                    f"converting a {array.dtype} tensor to {np.dtype(dtype)} needs a copy, "
                    "which copy=False forbids"
                )
            return array.astype(dtype)
        return array.copy() if copy else array

    def __dlpack__(self, *, stream=None, **options):
        """Export through DLPack without a copy (`torch.from_dlpack(t)`, `np.from_dlpack(t)`,
        `cupy.from_dlpack(t)`): the consumer shares this tensor's memory. `options`
        (max_version, dl_device, copy) pass on to the array's own `__dlpack__`. A tensor that
        requires grad is refused, as in PyTorch: the consumer could not see its graph; export
        `t.detach()`."""
        if self.requires_grad:
            raise RuntimeError(
                "can't export a tensor that requires grad through DLPack: use tensor.detach()"
            )
        given = {k: v for k, v in options.items() if v is not None}
        return self.data.__dlpack__(stream=stream, **given)

    def __dlpack_device__(self) -> tuple[int, int]:
        """(DLPack device type, device index): (1, 0) for the CPU, (2, i) for CUDA GPU i."""
        return self.data.__dlpack_device__()

    # ---- autograd ---------------------------------------------------------------------
    def backward(self, grad: Tensor | None = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) · grad into every leaf's `.grad` (grad defaults to 1).
        The graph's saved arrays are freed on the way, so a second backward through it raises,
        unless this call has `retain_graph=True` (then a second call accumulates again)."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, got shape {self.shape}"
                )
            g = backend.get_array_module(self.data).ones_like(self.data)
        else:
            g = grad.data if isinstance(grad, Tensor) else grad
            if g.shape != self.shape:
                raise ValueError(f"gradient of shape {g.shape} for a tensor of shape {self.shape}")
        autograd.backward(self, g, retain_graph)

    def _accumulate_grad(self, g) -> None:
        g = g.astype(self.dtype, copy=False)
        if self.grad is None:
            self.grad = Tensor(backend.get_array_module(g).ascontiguousarray(g))
        else:
            self.grad = Tensor(self.grad.data + g)  # never in place: gradient arrays may be shared
        for hook in getattr(self, "_grad_hooks", ()):
            hook(self)

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """Call `hook(self)` each time a backward pass has accumulated into this leaf's `.grad`
        (PyTorch's name; DistributedDataParallel reduces the gradients from here)."""
        if not self.is_leaf:
            raise RuntimeError("a post accumulate grad hook needs a leaf tensor")
        if getattr(self, "_grad_hooks", None) is None:
            self._grad_hooks = []
        self._grad_hooks.append(hook)
        return RemovableHandle(self._grad_hooks, hook)

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got {self.dtype}")
        self.requires_grad = requires_grad
        return self

    # ---- conversion -------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU when on "cuda")."""
        return backend.to_device(self.data, "cpu")

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, target) -> Tensor:
        """`.to("cuda")`, `.to("cpu")` or `.to(tinynorm.float64)`; differentiable."""
        if isinstance(target, str):
            return ops.to_device(self, backend.check_device(target))
        return ops.cast(self, np.dtype(target))

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def float(self) -> Tensor:
        return ops.cast(self, np.dtype(np.float32))

    def double(self) -> Tensor:
        return ops.cast(self, np.dtype(np.float64))

    def long(self) -> Tensor:
        return ops.cast(self, np.dtype(np.int64))

    # ---- arithmetic (broadcasting) ----------------------------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, exponent):
        if not isinstance(exponent, numbers.Real):
            raise TypeError("only a real number can be an exponent: tensor ** number")
        return ops.pow(self, float(exponent))

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    # comparisons give boolean tensors outside the graph (masks, accuracy)
    def __eq__(self, other):  # type: ignore[override]
        return Tensor(self.data == _data(other))

    def __ne__(self, other):  # type: ignore[override]
        return Tensor(self.data != _data(other))

    def __lt__(self, other):
        return Tensor(self.data < _data(other))

    def __le__(self, other):
        return Tensor(self.data <= _data(other))

    def __gt__(self, other):
        return Tensor(self.data > _data(other))

    def __ge__(self, other):
        return Tensor(self.data >= _data(other))

    __hash__ = object.__hash__

    # ---- unary ------------------------------------------------------------------------
    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def sqrt(self):
        return ops.sqrt(self)

    def relu(self):
        return ops.relu(self)

    def sigmoid(self):
        return ops.sigmoid(self)

    def tanh(self):
        return ops.tanh(self)

    def abs(self):
        return ops.abs(self)

    # ---- reductions -------------------------------------------------------------------
    def sum(self, dim=None, keepdim: bool = False):
        return ops.sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim: bool = False):
        return ops.mean(self, dim, keepdim)

    def max(self, dim: int | None = None, keepdim: bool = False):
        """The largest value, or with `dim` (values, indices) along it, as in PyTorch."""
        if dim is None:
            return ops.max(self)
        return MaxResult(ops.max(self, dim, keepdim), self.argmax(dim, keepdim))

    def amax(self, dim=None, keepdim: bool = False):
        """The largest values over one or several dims (`dim` an int or a tuple)."""
        return ops.max(self, dim, keepdim)

    def argmax(self, dim=None, keepdim: bool = False) -> Tensor:
        out = self.data.argmax(axis=dim)
        if keepdim and dim is not None:
            out = backend.get_array_module(out).expand_dims(out, dim)
        return Tensor(out)

    # ---- shape ------------------------------------------------------------------------
    def reshape(self, *shape):
        return ops.reshape(self, _shape_args(shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        return ops.flatten(self, start_dim, end_dim)

    def transpose(self, dim0: int, dim1: int):
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return ops.permute(self, tuple(axes))

    def permute(self, *dims):
        return ops.permute(self, _shape_args(dims))

    @property
    def T(self):
        return ops.permute(self, tuple(reversed(range(self.ndim))))

    def __getitem__(self, index):
        return ops.getitem(self, index)


class MaxResult(NamedTuple):
    """`Tensor.max(dim)`: the values and their indices (PyTorch's `torch.return_types.max`)."""

    values: Tensor
    indices: Tensor


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _shape_args(args: tuple) -> tuple[int, ...]:
    """Accept both `t.reshape(2, 3)` and `t.reshape((2, 3))`."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def tensor(data, dtype=None, requires_grad: bool = False, device: str = "cpu") -> Tensor:
    """A new leaf tensor holding a copy of `data` (PyTorch's `torch.tensor`).

    Python floats become float32 and integers int64 (class labels stay integer); a NumPy array
    keeps its dtype unless `dtype` is given.
    """
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or backend.is_cupy(data):
        array = data.astype(dtype or data.dtype, copy=True)
    else:
        array = np.array(data)
        if array.dtype == object:
            raise TypeError(f"cannot make a tensor from {type(data).__name__}")
        array = array.astype(dtype or _default_dtype(array), copy=False)
    return Tensor(backend.to_device(array, device), requires_grad=requires_grad)


from . import autograd, ops  # noqa: E402  (both build on the Tensor class defined above)
