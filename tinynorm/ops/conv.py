"""2-d convolution as one fused op: im2col + one GEMM forward, one GEMM per gradient backward.

The window helpers (`pair`, `output_size`, `pad2d`, `windows`, `col2im`) are shared with
pooling (`pool.py`). Every one is written with the array module of its data (NumPy or CuPy).

im2col in one picture: `windows` is a strided *view* of the zero-padded input, shaped
(N, C, kh, kw, OH, OW), whose element [n, c, i, j, h, w] is x_pad[n, c, h·sh + i, w·sw + j].
Copying it once into a contiguous (C·kh·kw, N·OH·OW) matrix turns the convolution into a matrix
product; `col2im` is its adjoint: it adds each window position back to where it came from.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

from .. import backend
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


def pad2d(x, padding: tuple[int, int], value: float):
    """x (N, C, H, W) with `padding` rows/columns of `value` on each side (no copy if none)."""
    if padding == (0, 0):
        return x
    xp = backend.get_array_module(x)
    ph, pw = padding
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def windows(x_pad, kernel: tuple[int, int], stride: tuple[int, int]):
    """The sliding windows of x_pad (N, C, Hp, Wp) as a read-only view (N, C, kh, kw, OH, OW):
    [n, c, i, j, h, w] = x_pad[n, c, h·sh + i, w·sw + j]. No data is copied."""
    xp = backend.get_array_module(x_pad)
    N, C, Hp, Wp = x_pad.shape
    (kh, kw), (sh, sw) = kernel, stride
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    sn, sc, sy, sx = x_pad.strides
    return xp.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, kh, kw, OH, OW), strides=(sn, sc, sy, sx, sy * sh, sx * sw)
    )


def col2im(dwin, shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int]):
    """The adjoint of `windows` after `pad2d`: dwin (..., kh, kw, OH, OW) summed back into an
    array of `shape` (..., H, W), overlapping windows adding up. The leading axes are any
    (N, C for pooling; C, N for conv2d, whose gradient columns come in that order). One loop over
    the kh·kw offsets, each a strided add of a whole (..., OH, OW) block."""
    xp = backend.get_array_module(dwin)
    kh, kw, OH, OW = dwin.shape[-4:]
    (sh, sw), (ph, pw) = stride, padding
    H, W = shape[-2:]
    dx_pad = xp.zeros((*shape[:-2], H + 2 * ph, W + 2 * pw), dtype=dwin.dtype)
    for i in range(kh):
        for j in range(kw):
            dx_pad[..., i : i + sh * OH : sh, j : j + sw * OW : sw] += dwin[..., i, j, :, :]
    if padding == (0, 0):
        return dx_pad
    return xp.ascontiguousarray(dx_pad[..., ph : ph + H, pw : pw + W])


class Conv2d(Function):
    """y[n, o] = Σ_{c,i,j} W[o, c, i, j] · x_pad[n, c, h·sh + i, w·sw + j] + b[o].

    With W₂ = W as (O, C·kh·kw), cols = im2col(x) (C·kh·kw, N·OH·OW) and Y, dY as (O, N·OH·OW):
    Y = W₂ cols + b;  dW₂ = dY colsᵀ;  dcols = W₂ᵀ dY, then dx = col2im(dcols);  db = Σ dY.
    """

    def forward(self, x, weight, bias, *, stride, padding):
        xp = backend.get_array_module(x)
        N, (O, C, kh, kw) = x.shape[0], weight.shape
        win = windows(pad2d(x, padding, 0), (kh, kw), stride)
        OH, OW = win.shape[4:]
        cols = xp.ascontiguousarray(win.transpose(1, 2, 3, 0, 4, 5)).reshape(C * kh * kw, -1)
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
        xp = backend.get_array_module(grad)
        N, O, OH, OW = grad.shape
        C, kh, kw = self.w_shape[1:]
        need_x, need_w, need_b = self.needs_input_grad
        g2 = grad.transpose(1, 0, 2, 3).reshape(O, -1)
        dw = (g2 @ self.cols.T).reshape(self.w_shape) if need_w else None
        dx = None
        if need_x:
            dcols = self.w2.T @ g2
            dwin = dcols.reshape(C, kh, kw, N, OH, OW).transpose(0, 3, 1, 2, 4, 5)
            dx_cn = col2im(dwin, (C, N, *self.x_shape[2:]), self.stride, self.padding)
            dx = xp.ascontiguousarray(dx_cn.transpose(1, 0, 2, 3))
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
