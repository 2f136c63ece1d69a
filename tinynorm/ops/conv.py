"""2-d convolution as one fused op: per image, one GEMM forward and one per gradient backward,
over chunks of the batch small enough to stay in cache, a share of the batch per thread.

im2col in one picture: image n's column matrix cols_n (C·kh·kw, OH·OW) holds, at row (c, i, j)
and column (h, w), the input value x[n, c, h·sh + i - ph, w·sw + j - pw] (0 in the padding), so
the convolution becomes a matrix product with the weight as (O, C·kh·kw); `col2im` is its
adjoint: it adds each column entry back to where it came from. Both are kernels
(`tinynorm.kernels`, Numba on the CPU and CUDA on the GPU); stride 1 on the CPU uses the
shifted rows of the padded image instead (see `Conv2d`). The argument checks (`pair`,
`check_input`, `output_size`) are shared with pooling."""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import numpy as np

from .. import backend, kernels, threads
from ..autograd import Function
from ..tensor import Tensor
from ..threads import get_num_threads
from .normalize import check_dtype


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


COLUMN_BYTES = 1 << 20  # the columns of one thread's chunk of images on the CPU: they stay in L2


class Conv2d(Function):
    """y[n, o] = Σ_{c,i,j} W[o, c, i, j] · x_pad[n, c, h·sh + i, w·sw + j] + b[o].

    Per image n, with cols_n its columns (C·kh·kw, OH·Wq), W₂ = W as (O, C·kh·kw) and Y_n,
    dY_n as (O, OH·Wq):
    Y_n = W₂ cols_n + b;  dW₂ᵀ = Σ_n cols_n dY_nᵀ;  dx_n = adjoint(W₂ᵀ dY_n);  db = Σ dY.
    Two column layouts share this: `im2col` (any stride; Wq = OW) and, for stride 1 on the CPU,
    shifted rows of the zero-padded image (Wq = Wp = W + 2·pw): row (c, i, j) of cols_n is the
    flat padded plane c from i·Wp + j on, one contiguous copy instead of OH short ones, at the
    price of Wp - OW extra columns per output row, which the forward drops and the backward
    sets to zero. Y_n lands in y's (N, O, OH, OW) layout, so nothing is transposed.

    On the CPU each of `get_num_threads()` threads takes a share of the batch
    (`threads.parallel_map`), in chunks whose columns stay in its cache, with serial kernels
    and one-thread BLAS; the backward recomputes the columns (cheaper than keeping them: 40 MB
    for a 16-channel 14×14 input at batch 128). On the GPU the whole batch is one chunk.
    """

    def forward(self, x, weight, bias, *, stride, padding):
        xp = backend.get_array_module(x)
        N, (O, _, kh, kw) = x.shape[0], weight.shape
        self.out = output_size("conv2d", x.shape, (kh, kw), stride, padding)
        self.x = xp.ascontiguousarray(x)  # so each chunk x[a:b] is a contiguous view
        self.weight, self.stride, self.padding = weight, stride, padding
        self.shifted = stride == (1, 1) and not kernels.is_cupy(x)
        (OH, OW), (H, W), (ph, pw) = self.out, x.shape[2:], padding
        self.plane = (H + 2 * ph, W + 2 * pw) if self.shifted else (H, W)
        self.width = OH * (self.plane[1] if self.shifted else OW)  # columns of one image
        y = xp.empty((N, O, OH, OW), x.dtype)
        w2 = weight.reshape(O, -1)

        def share(images: slice) -> None:
            for part, cols in self.columns(images):
                full = xp.matmul(w2, cols).reshape(-1, O, OH, self.width // OH)[..., :OW]
                if bias is None:
                    y[part] = full
                else:  # added while the chunk is in cache
                    xp.add(full, bias[:, None, None], out=y[part])

        threads.parallel_map(share, self.shares())
        return y

    def shares(self) -> list[slice]:
        """The batch cut into one share per thread (one share on the GPU)."""
        N = self.x.shape[0]
        return [slice(0, N)] if kernels.is_cupy(self.x) else threads.split(N, get_num_threads())

    def chunks(self, images: slice) -> list[slice]:
        """A share of the batch cut into chunks whose columns take at most COLUMN_BYTES (at
        least one image a chunk); one chunk on the GPU."""
        per_image = self.weight[0].size * self.width * self.x.itemsize
        step = images.stop if kernels.is_cupy(self.x) else max(1, COLUMN_BYTES // per_image)
        return [
            slice(a, min(a + step, images.stop)) for a in range(images.start, images.stop, step)
        ]

    def padded(self, n: int):
        """A zeroed buffer for n padded images (n, C, Hp·Wp), with kw - 1 values to spare: the
        last row of shifted columns reads that far past the last plane (into dropped columns)."""
        C, kw = self.x.shape[1], self.weight.shape[3]
        flat = np.zeros(n * C * self.plane[0] * self.plane[1] + kw - 1, self.x.dtype)
        return flat, flat[: flat.size - kw + 1].reshape(n, C, *self.plane)

    def columns(self, images: slice):
        """(chunk, its columns (n, C·kh·kw, width)) over a share of the batch, in one buffer."""
        parts, kernel = self.chunks(images), self.weight.shape[2:]
        largest = parts[0].stop - parts[0].start  # the first chunk is a largest one
        xp = backend.get_array_module(self.x)
        buffer = xp.empty(self.weight[0].size * self.width * largest, self.x.dtype)
        if self.shifted:
            (ph, pw), (H, W) = self.padding, self.x.shape[2:]
            flat, planes = self.padded(largest)
        for part in parts:
            n = part.stop - part.start
            cols = buffer[: self.weight[0].size * self.width * n]
            if self.shifted:
                planes[:n, :, ph : ph + H, pw : pw + W] = self.x[part]
                yield part, kernels.shifted_rows(flat, planes[:n].shape, kernel, cols)
            else:
                yield part, kernels.im2col(self.x[part], kernel, self.stride, self.padding, cols)

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        x, weight, O = self.x, self.weight, grad.shape[1]
        grad = xp.ascontiguousarray(grad)
        need_x, need_w, need_b = self.needs_input_grad
        w2 = weight.reshape(O, -1)
        dx = xp.empty_like(x) if need_x else None

        def share(images: slice):
            dw_t = xp.zeros(w2.shape[::-1], w2.dtype) if need_w else None  # dW₂ᵀ
            largest = self.chunks(images)[0]
            wide = self.wide(largest.stop - largest.start, grad)
            padded = self.padded(largest.stop - largest.start) if self.shifted and need_x else None
            chunks = self.columns(images) if need_w else ((p, None) for p in self.chunks(images))
            for part, cols in chunks:
                g = self.widened(grad[part], wide)
                if need_w:  # Σ cols_n dY_nᵀ runs faster than Σ dY_n cols_nᵀ in BLAS
                    dw_t += (cols @ g.swapaxes(1, 2)).sum(axis=0)
                if need_x:
                    self.adjoint(xp.matmul(w2.T, g), dx[part], padded)
            return dw_t

        dws = threads.parallel_map(share, self.shares())
        dw = sum(dws).T.reshape(weight.shape) if need_w else None
        db = grad.sum(axis=(0, 2, 3)) if need_b else None
        return dx, dw, db

    def wide(self, n: int, grad):
        """For shifted rows, a zeroed buffer for the dY of n images with the extra columns
        (n, O, OH, Wp), reused by a share's chunks (only the first OW columns are written); None
        for im2col."""
        if not self.shifted:
            return None
        return np.zeros((n, grad.shape[1], grad.shape[2], self.plane[1]), grad.dtype)

    def widened(self, g, wide):
        """dY of a chunk (n, O, OH, OW) as (n, O, width), through `wide` for shifted rows."""
        n, O, _, OW = g.shape
        if wide is None:
            return g.reshape(n, O, self.width)
        wide[:n, ..., :OW] = g
        return wide[:n].reshape(n, O, self.width)

    def adjoint(self, dcols, dx, padded) -> None:
        """dx (a chunk's input gradient, overwritten) from its columns' gradient; `padded` is
        a share's buffer of padded planes (shifted rows) or None (im2col)."""
        kernel = self.weight.shape[2:]
        if padded is None:
            kernels.col2im(dcols, dx.shape, kernel, self.stride, self.padding, out=dx)
            return
        (ph, pw), (H, W), n = self.padding, dx.shape[2:], dx.shape[0]
        flat, planes = padded
        kernels.add_shifted_rows(dcols, planes[:n].shape, kernel, flat)  # overwrites flat
        dx[...] = planes[:n, :, ph : ph + H, pw : pw + W]


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
