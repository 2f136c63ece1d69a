"""conv2d, max_pool2d and avg_pool2d: values against naive loops, gradients against finite
differences, dtypes and error messages."""

import itertools

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.ops import avg_pool2d, conv2d, max_pool2d


def _two(value):
    return (value, value) if isinstance(value, int) else value


def _pad(x, padding, value):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def naive_conv2d(x, w, b, stride, padding):
    """The definition, one output element at a time."""
    (sh, sw), xp = stride, _pad(x, padding, 0.0)
    N, _, Hp, Wp = xp.shape
    O, _, kh, kw = w.shape
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    out = np.zeros((N, O, OH, OW))
    for n, o, h, v in itertools.product(range(N), range(O), range(OH), range(OW)):
        patch = xp[n, :, h * sh : h * sh + kh, v * sw : v * sw + kw]
        out[n, o, h, v] = np.sum(patch * w[o]) + (0.0 if b is None else b[o])
    return out


def naive_pool2d(x, kernel, stride, padding, reduce, pad_value):
    (kh, kw), (sh, sw), xp = kernel, stride, _pad(x, padding, pad_value)
    N, C, Hp, Wp = xp.shape
    OH, OW = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    out = np.zeros((N, C, OH, OW))
    for n, c, h, v in itertools.product(range(N), range(C), range(OH), range(OW)):
        out[n, c, h, v] = reduce(xp[n, c, h * sh : h * sh + kh, v * sw : v * sw + kw])
    return out


def leaf(rng, *shape, dtype=np.float64, requires_grad=True):
    return tn.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=requires_grad)


# (input shape, weight shape, stride, padding)
CONV_CASES = [
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 0),
    ((2, 3, 5, 5), (4, 3, 3, 3), 1, 1),
    ((1, 2, 7, 5), (3, 2, 3, 2), 2, 1),
    ((2, 2, 7, 5), (3, 2, 2, 3), (2, 1), (0, 1)),
    ((1, 1, 6, 6), (2, 1, 1, 1), 2, 0),
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("x_shape", "w_shape", "stride", "padding"), CONV_CASES)
def test_conv2d_matches_naive_and_gradcheck(rng, x_shape, w_shape, stride, padding, bias):
    x, w = leaf(rng, *x_shape), leaf(rng, *w_shape)
    b = leaf(rng, w_shape[0]) if bias else None
    expected = naive_conv2d(
        x.data, w.data, None if b is None else b.data, _two(stride), _two(padding)
    )
    np.testing.assert_allclose(conv2d(x, w, b, stride, padding).data, expected, rtol=1e-12)
    inputs = [x, w] if b is None else [x, w, b]
    assert tn.gradcheck(lambda *t: conv2d(*t, stride=stride, padding=padding), inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("images_per_chunk", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_in_shares_and_chunks(rng, monkeypatch, images_per_chunk, threads, stride):
    """On the CPU each thread takes a share of the batch, in chunks whose columns fit
    COLUMN_BYTES: with 1 and 2 threads, 1, 2 and 4 images a chunk (5 images: partial chunks),
    and both column layouts (stride 1: shifted rows; stride 2: im2col), values and gradients
    stay exact, and the columns are made the expected number of times."""
    from tinynorm import kernels
    from tinynorm.ops import conv

    x, w, b = leaf(rng, 5, 2, 6, 5), leaf(rng, 3, 2, 3, 3), leaf(rng, 3)
    width = 6 * 7 if stride == 1 else 3 * 3  # columns of an image (shifted rows: Wp = 7 a row)
    monkeypatch.setattr(conv, "COLUMN_BYTES", images_per_chunk * 2 * 3 * 3 * width * 8)
    made = []
    layout = "shifted_rows" if stride == 1 else "im2col"
    original = getattr(kernels, layout)
    monkeypatch.setattr(kernels, layout, lambda *a: made.append(a) or original(*a))
    previous = tn.get_num_threads()
    tn.set_num_threads(threads)
    try:
        expected = naive_conv2d(x.data, w.data, b.data, (stride, stride), (1, 1))
        np.testing.assert_allclose(conv2d(x, w, b, stride, 1).data, expected, rtol=1e-12)
        shares = [3, 2] if threads == 2 else [5]
        assert len(made) == sum(-(-n // images_per_chunk) for n in shares)
        assert tn.gradcheck(lambda *t: conv2d(*t, stride=stride, padding=1), [x, w, b])
        frozen = tn.tensor(w.data)  # only dx wanted: its chunks need no columns
        assert tn.gradcheck(lambda x: conv2d(x, frozen, stride=stride, padding=1), [x])
    finally:
        tn.set_num_threads(previous)


def test_conv2d_gradient_only_where_asked(rng):
    """Only the weight wants a gradient: no dx is computed."""
    x, w, b = leaf(rng, 2, 3, 6, 5, requires_grad=False), leaf(rng, 4, 3, 3, 3), leaf(rng, 4)
    y = conv2d(x, w, b)
    dx, dw, db = y._fn.backward(np.ones(y.shape))
    assert dx is None and dw.shape == w.shape and db.shape == b.shape
    assert tn.gradcheck(lambda x, w, b: conv2d(x, w, b, padding=1), [x, w, b])
    assert x.grad is None


def test_conv2d_input_gradient_only(rng):
    """Only the input wants a gradient: no dW is computed."""
    x = leaf(rng, 2, 3, 6, 5)
    w = leaf(rng, 4, 3, 3, 3, requires_grad=False)
    y = conv2d(x, w)
    dx, dw, db = y._fn.backward(np.ones(y.shape))
    assert dx.shape == x.shape and dw is None and db is None
    assert tn.gradcheck(lambda x, w: conv2d(x, w, stride=2, padding=1), [x, w])
    assert w.grad is None


def test_conv2d_non_contiguous_input(rng):
    """The window view follows the input's own strides (no padding, so no copy before it)."""
    x = tn.tensor(rng.standard_normal((6, 5, 3, 2)).transpose(3, 2, 0, 1))
    w = leaf(rng, 4, 3, 2, 2, requires_grad=False)
    assert not x.data.flags.c_contiguous
    expected = naive_conv2d(x.data, w.data, None, (1, 2), (0, 0))
    np.testing.assert_allclose(conv2d(x, w, stride=(1, 2)).data, expected, rtol=1e-12)


def test_conv2d_keeps_float32(rng):
    x, w, b = (
        leaf(rng, 2, 3, 6, 6, dtype=np.float32),
        leaf(rng, 4, 3, 3, 3, dtype=np.float32),
        leaf(rng, 4, dtype=np.float32),
    )
    y = conv2d(x, w, b, padding=1)
    assert y.dtype == np.float32
    y.sum().backward()
    assert (x.grad.dtype, w.grad.dtype, b.grad.dtype) == (np.float32,) * 3
    expected = naive_conv2d(x.data.astype(np.float64), w.data, b.data, (1, 1), (1, 1))
    np.testing.assert_allclose(y.data, expected, rtol=1e-4, atol=1e-5)


POOL_CASES = [
    ((2, 3, 4, 4), 2, None, 0),
    ((2, 2, 5, 5), 3, 1, 1),
    ((1, 2, 7, 5), (3, 2), (2, 1), (1, 0)),
    ((1, 1, 6, 5), 3, 2, 1),
]


@pytest.mark.parametrize(("x_shape", "kernel", "stride", "padding"), POOL_CASES)
def test_max_pool2d_matches_naive_and_gradcheck(rng, x_shape, kernel, stride, padding):
    x = leaf(rng, *x_shape)
    k, p = _two(kernel), _two(padding)
    s = k if stride is None else _two(stride)
    expected = naive_pool2d(x.data, k, s, p, np.max, -np.inf)
    np.testing.assert_array_equal(max_pool2d(x, kernel, stride, padding).data, expected)
    assert tn.gradcheck(lambda x: max_pool2d(x, kernel, stride, padding), [x])


@pytest.mark.parametrize(("x_shape", "kernel", "stride", "padding"), POOL_CASES)
def test_avg_pool2d_matches_naive_and_gradcheck(rng, x_shape, kernel, stride, padding):
    x = leaf(rng, *x_shape)
    k, p = _two(kernel), _two(padding)
    s = k if stride is None else _two(stride)
    expected = naive_pool2d(x.data, k, s, p, lambda win: win.sum() / win.size, 0.0)
    np.testing.assert_allclose(avg_pool2d(x, kernel, stride, padding).data, expected, rtol=1e-12)
    assert tn.gradcheck(lambda x: avg_pool2d(x, kernel, stride, padding), [x])


def test_max_pool2d_overlapping_windows_add_up():
    """The centre 9 is the maximum of all four overlapping 2×2 windows: it gets all four dy."""
    x = tn.tensor(np.array([[[[1.0, 2, 3], [4, 9, 5], [6, 7, 8]]]]), requires_grad=True)
    y = max_pool2d(x, 2, stride=1)
    np.testing.assert_array_equal(y.data, np.full((1, 1, 2, 2), 9.0))
    y.backward(tn.tensor(np.array([[[[1.0, 2], [3, 4]]]])))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(x.grad.data, expected)


def test_pools_keep_float32(rng):
    x = leaf(rng, 2, 3, 6, 6, dtype=np.float32)
    for pool in (max_pool2d, avg_pool2d):
        x.grad = None
        y = pool(x, 3, stride=2, padding=1)
        y.sum().backward()
        assert (y.dtype, x.grad.dtype) == (np.float32, np.float32)


def test_conv2d_errors(rng):
    x = leaf(rng, 2, 3, 8, 8)
    with pytest.raises(
        ValueError,
        match=r"input of shape \(2, 3, 8, 8\) has 3 channels but weight of shape "
        r"\(4, 5, 3, 3\) expects 5",
    ):
        conv2d(x, leaf(rng, 4, 5, 3, 3))
    with pytest.raises(ValueError, match=r"4-d input.*3-d input of shape \(3, 8, 8\)"):
        conv2d(leaf(rng, 3, 8, 8), leaf(rng, 4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"4-d weight.*3-d weight of shape \(4, 3, 3\)"):
        conv2d(x, leaf(rng, 4, 3, 3))
    with pytest.raises(ValueError, match=r"bias of shape \(5,\) .* weight of shape \(4, 3, 3, 3\)"):
        conv2d(x, leaf(rng, 4, 3, 3, 3), leaf(rng, 5))
    with pytest.raises(ValueError, match=r"kernel \(9, 9\) is larger than the input"):
        conv2d(x, leaf(rng, 4, 3, 9, 9))
    assert conv2d(x, leaf(rng, 4, 3, 9, 9), padding=1).shape == (2, 4, 2, 2)
    with pytest.raises(ValueError, match="conv2d padding must be at least 0, got -1"):
        conv2d(x, leaf(rng, 4, 3, 3, 3), padding=-1)
    with pytest.raises(ValueError, match="conv2d stride must be an int or a pair of ints"):
        conv2d(x, leaf(rng, 4, 3, 3, 3), stride=(1, 2, 3))
    with pytest.raises(TypeError, match="input float64 and weight float32"):
        conv2d(x, leaf(rng, 4, 3, 3, 3, dtype=np.float32))


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
def test_pool_errors(rng, pool):
    x = leaf(rng, 1, 2, 6, 6)
    name = pool.__name__
    with pytest.raises(ValueError, match=rf"{name}: padding \(2, 2\) must be at most half"):
        pool(x, 3, padding=2)
    with pytest.raises(ValueError, match=rf"{name}: expected a 4-d input.*\(2, 6, 6\)"):
        pool(leaf(rng, 2, 6, 6), 2)
    with pytest.raises(ValueError, match=rf"{name}: kernel \(7, 7\) is larger than the input"):
        pool(x, 7)
    for dtype in (np.int64, np.float16):
        with pytest.raises(TypeError, match=rf"{name}: input dtype {np.dtype(dtype)} is not"):
            pool(tn.Tensor(np.ones((1, 1, 4, 4), dtype=dtype)), 2)
