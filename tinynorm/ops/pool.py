"""2-d max and average pooling (PyTorch's `F.max_pool2d` and `F.avg_pool2d`).

Max pooling runs on two kernels of `tinynorm.kernels` (values with argmax, and the scatter of
the gradient). Average pooling reads the windows of the padded input through a strided view
(`windows`, no copy) and sends gradients back with `windows_adjoint`, both written with the
array module of the data (NumPy or CuPy); overlapping windows (stride < kernel) add up.
"""

from __future__ import annotations

from .. import backend, kernels
from ..autograd import Function
from ..tensor import Tensor
from .conv import check_input, output_size, pair


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


def windows_adjoint(
    dwin, shape: tuple[int, ...], stride: tuple[int, int], padding: tuple[int, int]
):
    """The adjoint of `windows` after `pad2d`: dwin (N, C, kh, kw, OH, OW) summed back into an
    array of `shape` (N, C, H, W), overlapping windows adding up. One loop over the kh·kw
    offsets (4 for the usual 2×2 pooling), each a strided add of a whole (N, C, OH, OW) block."""
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


class MaxPool2d(Function):
    """y[n, c, h, w] = max of the kh×kw window at (h·sh, w·sw) of x padded with -inf;
    dx: each dy[n, c, h, w] goes to its window's argmax (the first one on ties). Both passes
    are kernels (`tinynorm.kernels.max_pool`, `max_pool_backward`) that keep the argmax."""

    def forward(self, x, kernel, stride, padding):
        y, self.argmax = kernels.max_pool(x, kernel, stride, padding)
        self.x_shape, self.kernel, self.stride, self.padding = x.shape, kernel, stride, padding
        return y

    def backward(self, grad):
        return kernels.max_pool_backward(
            grad, self.argmax, self.x_shape, self.kernel, self.stride, self.padding
        )


class AvgPool2d(Function):
    """y[n, c, h, w] = mean of the kh×kw window at (h·sh, w·sw) of x zero-padded (the padding
    counts: divide by kh·kw); dx: each dy / (kh·kw) is added to every element of its window."""

    def forward(self, x, kernel, stride, padding):
        self.x_shape, self.kernel, self.stride, self.padding = x.shape, kernel, stride, padding
        return windows(pad2d(x, padding, 0), kernel, stride).mean(axis=(2, 3))

    def backward(self, grad):
        xp = backend.get_array_module(grad)
        N, C, OH, OW = grad.shape
        kh, kw = self.kernel
        dwin = xp.broadcast_to((grad / (kh * kw))[:, :, None, None], (N, C, kh, kw, OH, OW))
        return windows_adjoint(dwin, self.x_shape, self.stride, self.padding)


def _pool_params(op, x, kernel_size, stride, padding):
    """Checked (kernel, stride, padding) pairs; stride defaults to the kernel size."""
    check_input(op, x)
    kernel = pair(kernel_size, f"{op} kernel_size", 1)
    stride = kernel if stride is None else pair(stride, f"{op} stride", 1)
    padding = pair(padding, f"{op} padding", 0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel}")
    output_size(op, x.shape, kernel, stride, padding)
    return {"kernel": kernel, "stride": stride, "padding": padding}


def max_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """Max over kh×kw windows of x (N, C, H, W), padded with -inf -> (N, C, OH, OW)."""
    return MaxPool2d.apply(x, **_pool_params("max_pool2d", x, kernel_size, stride, padding))


def avg_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """Mean over kh×kw windows of x (N, C, H, W), zero-padded, padding included in the count."""
    return AvgPool2d.apply(x, **_pool_params("avg_pool2d", x, kernel_size, stride, padding))
