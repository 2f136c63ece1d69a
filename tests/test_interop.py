"""Tensors across library borders: NumPy's array protocol, DLPack both ways, from_numpy, and
the Python conveniences a notebook user expects (len, iteration, item, tolist, repr). Every
"no copy" claim is checked by writing through one side and reading the other."""

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import interop


def shares(a: np.ndarray, t: tn.Tensor) -> bool:
    return np.shares_memory(a, t.data)


# ---- NumPy's array protocol ---------------------------------------------------------------


def test_asarray_is_the_data_itself():
    t = tn.tensor([1.0, 2.0, 3.0])
    a = np.asarray(t)
    assert a.dtype == np.float32 and shares(a, t)
    a[0] = 7
    assert t.tolist() == [7.0, 2.0, 3.0]


def test_asarray_copies_only_when_it_must():
    t = tn.tensor([1.0, 2.0])
    converted = np.asarray(t, dtype=np.float64)
    assert converted.dtype == np.float64 and not shares(converted, t)
    copied = np.array(t, copy=True)
    assert not shares(copied, t) and copied.tolist() == [1.0, 2.0]
    assert shares(np.array(t, copy=False), t)
    with pytest.raises(ValueError, match="needs a copy, which copy=False forbids"):
        np.array(t, dtype=np.float64, copy=False)


def test_a_cuda_tensor_says_to_call_cpu_first(monkeypatch):
    t = tn.tensor([1.0])
    monkeypatch.setattr(tn.Tensor, "device", property(lambda self: "cuda"))
    with pytest.raises(TypeError, match=r"cuda tensor.*call \.cpu\(\) first"):
        np.asarray(t)


def test_mixed_expressions_with_numpy_give_tensors():
    t = tn.tensor([1.0, 2.0], requires_grad=True)
    for out in (np.ones(2, np.float32) + t, np.ones(2, np.float32) * t, t - np.ones(2)):
        assert isinstance(out, tn.Tensor) and out.requires_grad
    (np.full(2, 3.0, np.float32) * t).sum().backward()
    assert t.grad.tolist() == [3.0, 3.0]


# ---- from_numpy ---------------------------------------------------------------------------


def test_from_numpy_shares_memory_dtype_and_strides():
    base = np.arange(24, dtype=np.int16).reshape(4, 6)
    view = base[::2, 1::2]  # not contiguous
    t = tn.from_numpy(view)
    assert t.dtype == np.int16 and t.shape == (2, 3) and t.data.strides == view.strides
    assert shares(view, t) and not t.requires_grad
    base[0, 1] = -5
    assert t.tolist()[0][0] == -5


def test_from_numpy_clear_errors():
    with pytest.raises(TypeError, match=r"expects a numpy\.ndarray, got list"):
        tn.from_numpy([1, 2])
    with pytest.raises(TypeError, match="dtype complex64 is not supported"):
        tn.from_numpy(np.zeros(2, np.complex64))
    with pytest.raises(TypeError, match="dtype object is not supported"):
        tn.from_numpy(np.array([None]))


# ---- DLPack with NumPy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.bool_]
)
def test_dlpack_round_trip_with_numpy(dtype):
    a = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    t = tn.from_dlpack(a)
    assert t.dtype == a.dtype and shares(a, t) and not t.requires_grad
    back = np.from_dlpack(t)
    assert back.dtype == a.dtype and np.shares_memory(back, a)
    assert t.__dlpack_device__() == (interop.DLPACK_CPU, 0)


def test_dlpack_keeps_strides_of_a_non_contiguous_array():
    a = np.arange(30, dtype=np.float64).reshape(5, 6).T[1:, ::2]
    t = tn.from_dlpack(a)
    assert t.data.strides == a.strides and shares(a, t)
    out = np.from_dlpack(t)
    assert out.strides == a.strides
    out[0, 0] = 100.0
    assert a[0, 0] == 100.0


def test_a_tensor_that_requires_grad_is_not_exported():
    t = tn.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"requires grad.*tensor\.detach\(\)"):
        np.from_dlpack(t)
    assert shares(np.from_dlpack(t.detach()), t)


class Producer:
    """A DLPack producer on a device tinynorm does not run on."""

    def __dlpack__(self, stream=None):
        raise AssertionError("never asked for its memory")

    def __dlpack_device__(self):
        return (8, 0)


def test_from_dlpack_clear_errors():
    with pytest.raises(TypeError, match=r"__dlpack__ and __dlpack_device__.*got list"):
        tn.from_dlpack([1.0])
    with pytest.raises(ValueError, match=r"device type 8 \(Metal\) is not supported"):
        tn.from_dlpack(Producer())
    with pytest.raises(TypeError, match="dtype complex128 is not supported"):
        tn.from_dlpack(np.zeros(2, np.complex128))


# ---- PyTorch (installed by the compare extra, as in CI) -----------------------------------


def test_dlpack_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    t = tn.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    u = torch.from_dlpack(t)
    assert u.dtype == torch.float32 and tuple(u.shape) == (2, 3)
    u[0, 0] = 42.0
    assert t.tolist()[0][0] == 42.0  # the same memory
    w = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()  # not contiguous
    back = tn.from_dlpack(w)
    assert back.dtype == np.float64 and back.shape == (4, 3)
    assert back.data.strides == tuple(s * w.element_size() for s in w.stride())
    w[1, 2] = -1.0
    assert back.tolist()[1][2] == -1.0
    assert not back.requires_grad


def test_torch_refusals_are_clear():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="requires grad"):
        torch.from_dlpack(tn.randn(2, requires_grad=True))
    with pytest.raises(TypeError, match=r"from_dlpack: could not take this Tensor.*detach"):
        tn.from_dlpack(torch.ones(2, requires_grad=True))
    with pytest.raises(TypeError, match="from_dlpack: could not take this Tensor"):
        tn.from_dlpack(torch.ones(2, dtype=torch.bfloat16))


# ---- CuPy (on a machine with a GPU) ---------------------------------------------------------


def gpu_or_skip():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA GPU")
    except Exception as err:
        pytest.skip(f"no usable CUDA GPU: {err}")
    return cupy


def test_dlpack_round_trip_with_cupy():
    cupy = gpu_or_skip()
    a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
    t = tn.from_dlpack(a)
    assert t.device == "cuda" and t.__dlpack_device__()[0] == interop.DLPACK_CUDA
    back = cupy.from_dlpack(t)
    back[0, 0] = 9.0
    assert float(a[0, 0]) == 9.0
    with pytest.raises(TypeError, match=r"call \.cpu\(\) first"):
        np.asarray(t)


# ---- what a notebook user expects ------------------------------------------------------------


def test_len_iteration_item_tolist():
    t = tn.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    rows = list(t)
    assert len(t) == 3 and [r.tolist() for r in rows] == t.tolist()
    sum(row.sum() for row in rows).backward()  # the rows are differentiable views
    assert t.grad.tolist() == [[1.0, 1.0]] * 3
    assert tn.tensor([2.5]).item() == 2.5
    scalar = tn.tensor(3.0)
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(scalar)
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(scalar)
    with pytest.raises(ValueError, match="one element"):
        t.item()


def test_repr_names_the_op_of_a_computed_tensor():
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    assert repr(x * 2) == "tensor([2., 4.], grad_fn=<Mul>)"
    assert repr(x) == "tensor([1., 2.], requires_grad=True)"
    assert repr(tn.tensor([1, 2])) == "tensor([1, 2], dtype=int64)"
