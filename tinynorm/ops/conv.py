"""2-d convolution as one fused op: im2col + one GEMM forward, one GEMM per gradient backward.

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
    """An (N, C, H, W) floating-point input, or an error that names the problem."""
    if x.ndim != 4:
        raise ValueError(
            f"{op}: expected a 4-d input (N, C, H, W), got a {x.ndim}-d input of shape {x.shape}"
        )
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating-point input, got dtype {x.dtype}")


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


class Conv2d(Function):
    """y[n, o] = Σ_{c,i,j} W[o, c, i, j] · x_pad[n, c, h·sh + i, w·sw + j] + b[o].

    With W₂ = W as (O, C·kh·kw), cols = im2col(x) (C·kh·kw, N·OH·OW) and Y, dY as (O, N·OH·OW):
    Y = W₂ cols + b;  dW₂ = dY colsᵀ;  dcols = W₂ᵀ dY, then dx = col2im(dcols);  db = Σ dY.
    """

    def forward(self, x, weight, bias, *, stride, padding):
        xp = backend.get_array_module(x)
        N, (O, _, kh, kw) = x.shape[0], weight.shape
        OH, OW = output_size("conv2d", x.shape, (kh, kw), stride, padding)
        cols = kernels.im2col(x, (kh, kw), stride, padding)
        w2 = weight.reshape(O, -1)
        y = w2 @ cols
        if bias is not None:
            y += bias[:, None]
        need_x, need_w = self.needs_input_grad[:2]
        self.cols = cols if need_w else None
        self.w2 = w2 if need_x else None
        self.x_shape, self.w_shape = x.shape, weight.shape
        self.stride, self.padding = stride, padding
        return xp.ascontiguousarray(y.reshape(O, N, OH, OW).transpose(1, 0, 2, 3))

    def backward(self, grad):
        O = grad.shape[1]
        need_x, need_w, need_b = self.needs_input_grad
        g2 = grad.transpose(1, 0, 2, 3).reshape(O, -1)
        dw = (g2 @ self.cols.T).reshape(self.w_shape) if need_w else None
        dx = None
        if need_x:
            kernel = self.w_shape[2:]
            dx = kernels.col2im(self.w2.T @ g2, self.x_shape, kernel, self.stride, self.padding)
        return dx, dw, (g2.sum(axis=1) if need_b else None)


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
