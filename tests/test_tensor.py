"""Tensor creation, dtypes, the autograd engine and its public API."""

import numpy as np
import pytest

import tinynorm as tn


def test_python_floats_become_float32_and_ints_int64():
    assert tn.tensor([1.0, 2.0]).dtype == np.float32
    assert tn.tensor([1, 2]).dtype == np.int64
    assert tn.tensor(np.zeros(3)).dtype == np.float64  # an ndarray keeps its dtype
    assert tn.tensor([1, 2], dtype=tn.float64).dtype == np.float64
    assert tn.Tensor(np.float64(2.5)).dtype == np.float64  # a NumPy scalar keeps its dtype


def test_tensor_copies_its_data():
    a = np.ones(3, np.float32)
    t = tn.tensor(a)
    a[0] = 5
    assert t.numpy()[0] == 1


def test_numpy_item_shape_device():
    t = tn.tensor([[1.0, 2.0]], requires_grad=True)
    assert isinstance(t.numpy(), np.ndarray)
    assert t.shape == (1, 2) and t.device == "cpu" and t.ndim == 2
    assert t.sum().item() == 3.0
    with pytest.raises(ValueError, match="one element"):
        t.item()


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        tn.tensor([1, 2], requires_grad=True)


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        tn.tensor([1.0], device="tpu")


def test_backward_of_a_scalar_fills_leaf_grads():
    x = tn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])
    assert x.grad.dtype == np.float32


def test_gradients_accumulate_over_backward_calls():
    x = tn.tensor([1.0, -2.0], requires_grad=True)
    (3 * x).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3 + 2, 3 - 4])


def test_a_tensor_used_twice_gets_both_gradients():
    x = tn.tensor([2.0], requires_grad=True)
    y = x * x + x.exp() * x  # x reaches y along four paths
    y.backward(tn.tensor([1.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2 * 2 + np.exp(2) * (2 + 1)], rtol=1e-6)


def test_broadcasting_is_undone_in_backward():
    a = tn.tensor(np.ones((2, 3)), requires_grad=True)
    b = tn.tensor(np.ones((1, 3)), requires_grad=True)
    c = tn.tensor(np.ones(3), requires_grad=True)
    (a * b + c).sum().backward()
    assert b.grad.shape == (1, 3) and c.grad.shape == (3,)
    np.testing.assert_allclose(b.grad.numpy(), [[2, 2, 2]])
    np.testing.assert_allclose(c.grad.numpy(), [2, 2, 2])


def test_backward_needs_a_gradient_for_non_scalars():
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(tn.tensor([1.0]))


def test_backward_on_a_constant_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tn.tensor([1.0]).sum().backward()


def test_no_grad_records_no_graph_and_restores_the_mode():
    x = tn.tensor([1.0], requires_grad=True)
    with tn.no_grad():
        y = x * 2
        assert not tn.is_grad_enabled()
        with tn.enable_grad():
            assert (x * 2).requires_grad
    assert tn.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf

    @tn.no_grad()
    def infer(t):
        return t * 3

    assert not infer(x).requires_grad


def test_detach_cuts_the_graph_and_shares_data():
    x = tn.tensor([1.0, 2.0], requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    y = (d * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])  # d is a constant


def test_python_scalars_keep_float32():
    x = tn.tensor([1.0, 2.0])
    for y in (x + 1.5, 2.0 * x, x / 3, 1 - x, x**2, 1 / (x + 1)):
        assert y.dtype == np.float32


def test_float64_with_float32_promotes_like_numpy():
    assert (tn.tensor([1.0]) + tn.tensor(np.ones(1))).dtype == np.float64


def test_casts_are_differentiable():
    x = tn.tensor([1.5, 2.5], requires_grad=True)
    y = x.double()
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 5.0])
    assert x.to(tn.float64).dtype == np.float64 and x.long().dtype == np.int64


def test_comparisons_and_argmax_give_tensors_outside_the_graph():
    x = tn.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 1.0]], requires_grad=True)
    pred = x.argmax(dim=1)
    assert pred.tolist() == [1, 0] and not pred.requires_grad
    assert (pred == tn.tensor([1, 2])).tolist() == [True, False]
    assert (x > 1.5).numpy().sum() == 3


def test_reshape_view_transpose_permute_shapes():
    x = tn.randn(2, 3, 4)
    assert x.reshape(6, 4).shape == (6, 4) and x.view((4, 6)).shape == (4, 6)
    assert x.transpose(0, 2).shape == (4, 3, 2) and x.permute(1, 2, 0).shape == (3, 4, 2)
    assert x.flatten(1).shape == (2, 12) and x.T.shape == (4, 3, 2)
    with pytest.raises(ValueError, match=r"cannot reshape .*\(2, 3, 4\) to \(5, 5\)"):
        x.reshape(5, 5)


def test_manual_seed_repeats_random_draws():
    tn.manual_seed(3)
    a = tn.randn(5).numpy()
    tn.manual_seed(3)
    b = tn.randn(5).numpy()
    tn.manual_seed(4)
    c = tn.randn(5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_deep_chains_do_not_hit_the_recursion_limit():
    x = tn.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1
    y.sum().backward()
    assert x.grad.item() == 1.0


def test_repr_shows_values_and_flags():
    assert repr(tn.tensor([1.0, 2.0], requires_grad=True)) == (
        "tensor([1., 2.], requires_grad=True)"
    )
    assert "dtype=float64" in repr(tn.tensor(np.zeros(2)))


def test_truth_value_of_a_multi_element_tensor_is_an_error():
    a, b = tn.tensor([1.0, 2.0]), tn.tensor([1.0, 3.0])
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(a == b)
    assert a in [a]  # membership checks identity first, as in PyTorch
    assert bool(tn.tensor([2.0]) > 1)


def test_no_grad_as_a_decorator_survives_recursion():
    @tn.no_grad()
    def depth(n):
        return 0 if n == 0 else 1 + depth(n - 1)

    depth(3)
    assert tn.is_grad_enabled()


def test_vector_dot_vector_is_a_scalar():
    a = tn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = a @ tn.tensor([4.0, 5.0, 6.0])
    assert y.shape == () and y.item() == 32.0


def test_arange_keeps_its_step():
    assert tn.arange(10, step=3).tolist() == [0, 3, 6, 9]
    assert tn.arange(2, 8, 2).tolist() == [2, 4, 6]
