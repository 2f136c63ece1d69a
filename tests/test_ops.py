"""Every op: float64 gradient check, forward against NumPy, and clear errors."""

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.nn.functional as F


def t64(rng, *shape, positive=False):
    a = rng.standard_normal(shape)
    return tn.tensor(np.abs(a) + 0.5 if positive else a, requires_grad=True)


BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (lambda a, b: tn.ops.maximum(a, b), np.maximum),
}
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3))]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(("sa", "sb"), BROADCAST_SHAPES)
def test_binary_ops_gradcheck_with_broadcasting(rng, name, sa, sb):
    op, ref = BINARY[name]
    a, b = t64(rng, *sa), t64(rng, *sb, positive=True)
    np.testing.assert_allclose(op(a, b).numpy(), ref(a.numpy(), b.numpy()))
    assert tn.gradcheck(op, [a, b])


def test_scalar_operands_on_both_sides(rng):
    a = t64(rng, 3, positive=True)
    assert tn.gradcheck(lambda a: 2 - a + 3 * a / 4 - 1 / a + a**3 - (-a), [a])


UNARY = {
    "exp": (lambda x: x.exp(), np.exp, False),
    "log": (lambda x: x.log(), np.log, True),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, True),
    "abs": (lambda x: x.abs(), np.abs, False),
    "pow": (lambda x: x**2.5, lambda a: a**2.5, True),
    "relu": (F.relu, lambda a: np.maximum(a, 0), False),
    "sigmoid": (F.sigmoid, lambda a: 1 / (1 + np.exp(-a)), False),
    "tanh": (F.tanh, np.tanh, False),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary_ops(rng, name):
    op, ref, positive = UNARY[name]
    x = t64(rng, 3, 5, positive=positive)
    np.testing.assert_allclose(op(x).numpy(), ref(x.numpy()), rtol=1e-12)
    assert tn.gradcheck(op, [x])


@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 4), (1, 2, 3, 3)])
def test_tlu_gradcheck_and_forward(rng, shape):
    """max(y, τ) with τ per channel (FRN's TLU), against NumPy, gradients to y and τ."""
    y, tau = t64(rng, *shape), t64(rng, shape[1])
    z = tn.ops.tlu(y, tau)
    expected = np.maximum(y.numpy(), tau.numpy().reshape((1, -1) + (1,) * (len(shape) - 2)))
    np.testing.assert_array_equal(z.numpy(), expected)
    assert tn.gradcheck(tn.ops.tlu, [y, tau])


def test_tlu_sends_the_gradient_of_a_tie_to_the_threshold():
    y = tn.tensor([[[0.5, -1.0, 0.0]]], requires_grad=True)
    tau = tn.tensor([0.0], requires_grad=True)
    tn.ops.tlu(y, tau).backward(tn.tensor([[[1.0, 2.0, 4.0]]]))
    assert y.grad.tolist() == [[[1.0, 0.0, 0.0]]] and tau.grad.tolist() == [6.0]


def test_sigmoid_does_not_overflow():
    y = F.sigmoid(tn.tensor([-1000.0, 0.0, 1000.0])).numpy()
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("dim", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_mean_max(rng, dim, keepdim):
    x = t64(rng, 2, 3, 4)
    for name, ref in (("sum", np.sum), ("mean", np.mean), ("amax", np.max)):
        op = lambda x, name=name: getattr(x, name)(dim=dim, keepdim=keepdim)  # noqa: E731
        np.testing.assert_allclose(op(x).numpy(), ref(x.numpy(), axis=dim, keepdims=keepdim))
        assert tn.gradcheck(op, [x])


def test_max_along_a_dim_gives_values_and_indices_as_pytorch():
    x = tn.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 1.0]], requires_grad=True)
    values, indices = x.max(dim=1)
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0]
    assert x.max(1).values.shape == (2,) and x.max(1, keepdim=True).indices.shape == (2, 1)
    assert x.max().item() == 7.0
    values.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])


def test_max_shares_the_gradient_among_ties():
    x = tn.tensor([1.0, 3.0, 3.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.5, 0.5])


def test_reduce_over_a_bad_dim_is_an_error():
    with pytest.raises(IndexError, match="dim 3 is out of range"):
        tn.randn(2, 3).sum(dim=3)


def test_shape_ops_gradcheck(rng):
    x = t64(rng, 2, 3, 4)
    assert tn.gradcheck(lambda x: x.reshape(4, 6) * tn.tensor(np.arange(24.0).reshape(4, 6)), [x])
    assert tn.gradcheck(
        lambda x: x.permute(2, 0, 1) * tn.tensor(np.arange(24.0).reshape(4, 2, 3)), [x]
    )
    assert tn.gradcheck(lambda x: x.transpose(0, 1).flatten(1), [x])
    m = t64(rng, 33, 5)  # a 2-d permute copies through the blocked transpose kernel
    weights = tn.tensor(np.arange(165.0).reshape(5, 33))
    assert tn.gradcheck(lambda m: m.permute(1, 0) * weights, [m])


@pytest.mark.parametrize(
    "index",
    [
        1,
        (slice(None), 2),
        (Ellipsis, slice(1, 3)),
        ([0, 0, 1], slice(None), [3, 3, 0]),
        np.array([[1, 0], [1, 1]]),
    ],
)
def test_indexing_forward_and_gradcheck(rng, index):
    x = t64(rng, 2, 3, 4)
    np.testing.assert_array_equal(x[index].numpy(), x.numpy()[index])
    assert tn.gradcheck(lambda x: x[index], [x])


def test_repeated_indices_add_their_gradients():
    x = tn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[[0, 0, 2]].sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 0.0, 1.0])


def test_cat(rng):
    a, b = t64(rng, 2, 3), t64(rng, 2, 5)
    np.testing.assert_array_equal(
        tn.cat([a, b], dim=1).numpy(), np.concatenate([a.numpy(), b.numpy()], 1)
    )
    assert tn.gradcheck(lambda a, b: tn.cat([a, b, a], dim=-1), [a, b])
    with pytest.raises(ValueError, match="differ outside that dim"):
        tn.cat([a, b], dim=0)


@pytest.mark.parametrize(
    ("sa", "sb"),
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 2)),
        ((4,), (4, 3)),
        ((3, 4), (4,)),
        ((2, 1, 3, 4), (5, 4, 2)),
    ],
)
def test_matmul(rng, sa, sb):
    a, b = t64(rng, *sa), t64(rng, *sb)
    np.testing.assert_allclose((a @ b).numpy(), a.numpy() @ b.numpy())
    assert tn.gradcheck(lambda a, b: a @ b, [a, b])


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4, 5\)"):
        tn.randn(2, 3) @ tn.randn(4, 5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(rng, bias):
    x, w = t64(rng, 5, 3), t64(rng, 4, 3)
    b = t64(rng, 4) if bias else None
    ref = x.numpy() @ w.numpy().T + (b.numpy() if bias else 0)
    np.testing.assert_allclose(F.linear(x, w, b).numpy(), ref)
    assert tn.gradcheck(lambda *a: F.linear(*a), [x, w] + ([b] if bias else []))
    assert tn.gradcheck(lambda x, w: F.linear(x, w), [t64(rng, 2, 3, 3), w])  # leading dims


def test_linear_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)"):
        F.linear(tn.randn(5, 3), tn.randn(4, 2))


def np_log_softmax(a, axis):
    a = a - a.max(axis=axis, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_and_log_softmax(rng, dim):
    x = t64(rng, 3, 4)
    np.testing.assert_allclose(F.log_softmax(x, dim).numpy(), np_log_softmax(x.numpy(), dim))
    np.testing.assert_allclose(F.softmax(x, dim).numpy(), np.exp(np_log_softmax(x.numpy(), dim)))
    assert tn.gradcheck(lambda x: F.softmax(x, dim), [x])
    assert tn.gradcheck(lambda x: F.log_softmax(x, dim), [x])


def test_cross_entropy_value_and_gradient(rng):
    x = t64(rng, 6, 4)
    y = np.array([0, 3, 1, 1, 2, 0])
    ref = -np_log_softmax(x.numpy(), 1)[np.arange(6), y].mean()
    np.testing.assert_allclose(F.cross_entropy(x, tn.tensor(y)).item(), ref)
    assert tn.gradcheck(lambda x: F.cross_entropy(x, y), [x])


def test_cross_entropy_is_stable_for_huge_logits():
    x = tn.tensor([[1e4, 0.0, -1e4]], requires_grad=True)
    loss = F.cross_entropy(x, tn.tensor([1]))
    loss.backward()
    assert np.isclose(loss.item(), 1e4) and np.all(np.isfinite(x.grad.numpy()))


def test_cross_entropy_errors():
    x = tn.randn(3, 4)
    with pytest.raises(IndexError, match="class index 4 is out of range for 4 classes"):
        F.cross_entropy(x, tn.tensor([0, 4, 1]))
    with pytest.raises(IndexError, match="class index -1"):
        F.cross_entropy(x, tn.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match=r"integer class indices.*float32"):
        F.cross_entropy(x, tn.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(2,\)"):
        F.cross_entropy(x, tn.tensor([0, 1]))


def test_dropout(rng):
    x = tn.tensor(np.ones((200, 50), np.float32))
    tn.manual_seed(0)
    y = F.dropout(x, p=0.3).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    assert F.dropout(x, p=0.3, training=False) is x
    assert np.all(F.dropout(x, p=1.0).numpy() == 0)
    x64 = t64(rng, 4, 5)

    def fixed_mask_dropout(x):
        tn.manual_seed(1)
        return F.dropout(x, 0.5)

    assert tn.gradcheck(fixed_mask_dropout, [x64])
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, p=1.5)
