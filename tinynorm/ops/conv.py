"""2-d convolution as one fused op: im2col + one GEMM forward, one GEMM per gradient backward,
over chunks of the batch small enough to stay in cache.

im2col in one picture: the column matrix cols (C·kh·kw, N·OH·OW) holds, at row (c, i, j) and
column (n, h, w), the input value x[n, c, h·sh + i - ph, w·sw + j - pw] (0 in the padding), so
the convolution becomes one matrix product with the weight as (O, C·kh·kw); `col2im` is its
adjoint: it adds each column entry back to where it came from. Both are kernels
(`tinynorm.kernels`, Numba on the CPU and CUDA on the GPU). The argument checks (`pair`,
`check_input`, `output_size`) are shared with pooling.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor
from .norm import check_dtype


def pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    """`value` (an int or a pair of ints, each >= `minimum`) as a pair (height, width)."""
    try:
        a, b = (value, value) if isinstance(value, numbers.Integral) else value
        result = operator.index(a), operator.index(b)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if min(result) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return result


def check_input(op: str, x: Tensor) -> None:
    """An (N, C, H, W) float32 or float64 input, or an error that names the problem."""
    if x.ndim != 4:
        raise ValueError(
            f"{op}: expected a 4-d input (N, C, H, W), got a {x.ndim}-d input of shape {x.shape}"
        )
    check_dtype(op, x)


def output_size(
    op: str,
    shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int]:
    """(OH, OW) = ((H + 2·ph - kh) // sh + 1, (W + 2·pw - kw) // sw + 1) for an (N, C, H, W) input;
    an error when the kernel does not fit in the padded input."""
    (H, W), (kh, kw), (sh, sw), (ph, pw) = shape[2:], kernel, stride, padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    if kh > Hp or kw > Wp:
        raise ValueError(
            f"{op}: kernel {kernel} is larger than the input of shape {shape} "
            f"padded by {padding} to {(Hp, Wp)}"
        )
    return (Hp - kh) // sh + 1, (Wp - kw) // sw + 1


COLUMN_BYTES = 2 << 20  # the columns of one chunk of the batch on the CPU: they stay in cache


def batch_chunks(x, column_bytes: int) -> list[slice]:
    """The batch cut into runs of images whose columns take at most COLUMN_BYTES (at least one
    image a run) on the CPU, so each chunk's im2col, GEMM and col2im work in cache; one run on
    the GPU, where a single large GEMM is best."""
    N = x.shape[0]
    step = N if backend.is_cupy(x) else max(1, COLUMN_BYTES // column_bytes)
    return [slice(a, min(a + step, N)) for a in range(0, N, step)]


class Conv2d(Function):
    """y[n, o] = Σ_{c,i,j} W[o, c, i, j] · x_pad[n, c, h·sh + i, w·sw + j] + b[o].

    With W₂ = W as (O, C·kh·kw), and for each chunk of the batch cols = im2col(x) (C·kh·kw,
    n·OH·OW) and Y, dY as (O, n·OH·OW):
    Y = W₂ cols + b;  dW₂ = Σ_chunks dY colsᵀ;  dcols = W₂ᵀ dY, then dx = col2im(dcols);
    db = Σ dY. The backward recomputes each chunk's columns (cheaper than keeping all of them:
    at batch 128 they would be 40 MB for a 16-channel 14×14 input, far out of cache).
    """

    def forward(self, x, weight, bias, *, stride, padding):
        xp = backend.get_array_module(x)
        N, (O, _, kh, kw) = x.shape[0], weight.shape
        OH, OW = output_size("conv2d", x.shape, (kh, kw), stride, padding)
        x = xp.ascontiguousarray(x)  # so each chunk x[a:b] is a contiguous view
        self.x, self.weight, self.stride, self.padding = x, weight, stride, padding
        self.per_image = weight[0].size * OH * OW  # column entries of one image
        self.parts = batch_chunks(x, self.per_image * x.itemsize)
        w2 = weight.reshape(O, -1)
        y = xp.empty((N, O, OH, OW), x.dtype)
        for part, cols in self.columns():
            yc = w2 @ cols
            if bias is not None:
                yc += bias[:, None]
            y[part] = yc.reshape(O, -1, OH, OW).transpose(1, 0, 2, 3)
        return y

    def columns(self):
        """(chunk, its im2col columns) over the batch, in one reused buffer."""
        x, kernel = self.x, self.weight.shape[2:]
        largest = self.parts[0].stop  # the first chunk is a largest one
        buffer = backend.get_array_module(x).empty(self.per_image * largest, x.dtype)
        for part in self.parts:
            size = self.per_image * (part.stop - part.start)
            yield part, kernels.im2col(x[part], kernel, self.stride, self.padding, buffer[:size])

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        x, weight, O = self.x, self.weight, grad.shape[1]
        need_x, need_w, need_b = self.needs_input_grad
        w2 = weight.reshape(O, -1)
        dw = xp.zeros_like(w2) if need_w else None
        dx = xp.empty_like(x) if need_x else None
        chunks = self.columns() if need_w else ((p, None) for p in self.parts)
        for part, cols in chunks:
            g2 = grad[part].transpose(1, 0, 2, 3).reshape(O, -1)
            if need_w:
                dw += g2 @ cols.T
            if need_x:  # in chunks too, so that dcols stays in cache
                kernel = weight.shape[2:]
                kernels.col2im(
                    w2.T @ g2, x[part].shape, kernel, self.stride, self.padding, out=dx[part]
                )
        db = grad.sum(axis=(0, 2, 3)) if need_b else None
        return dx, (dw.reshape(weight.shape) if need_w else None), db


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """2-d cross-correlation (PyTorch's `F.conv2d`): x (N, C, H, W), weight (O, C, kh, kw),
    bias (O,) -> (N, O, OH, OW) with OH = (H + 2·ph - kh) // sh + 1 (OW alike)."""
    check_input("conv2d", x)
    if weight.ndim != 4:
        raise ValueError(
            f"conv2d: expected a 4-d weight (O, C, kh, kw), got a {weight.ndim}-d weight of "
            f"shape {weight.shape} (input of shape {x.shape})"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"conv2d: input of shape {x.shape} has {x.shape[1]} channels but weight of shape "
            f"{weight.shape} expects {weight.shape[1]}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(
            f"conv2d: bias of shape {bias.shape} does not match weight of shape {weight.shape} "
            f"(expected ({weight.shape[0]},))"
        )
    for t in (weight, bias):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"conv2d: input, weight and bias must share one dtype, got input {x.dtype} "
                f"and {'weight' if t is weight else 'bias'} {t.dtype}"
            )
    stride, padding = pair(stride, "conv2d stride", 1), pair(padding, "conv2d padding", 0)
    output_size("conv2d", x.shape, weight.shape[2:], stride, padding)
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding)
