"""The gradient checker itself: it must catch a wrong backward and say where."""

import numpy as np
import pytest

import tinynorm as tn
from tinynorm.autograd import Function


class WrongSquare(Function):
    """Forward x², backward 3x instead of 2x: a bug gradcheck must find."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, grad):
        return grad * 3 * self.x


def test_gradcheck_catches_a_wrong_backward_and_names_the_input():
    x = tn.tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = tn.tensor(np.array([0.5, 0.5]), requires_grad=True)
    with pytest.raises(tn.GradcheckError, match=r"input 1 \(shape \(2,\)\).*analytic.*numerical"):
        tn.gradcheck(lambda x, w: x * WrongSquare.apply(w), [x, w])


def test_gradcheck_passes_a_right_backward_and_restores_inputs():
    x = tn.tensor(np.array([[1.0, -2.0], [0.3, 4.0]]), requires_grad=True)
    before = x.numpy().copy()
    assert tn.gradcheck(lambda x: (x * x).sum(dim=1), [x])
    np.testing.assert_array_equal(x.numpy(), before)


def test_gradcheck_needs_float64():
    with pytest.raises(TypeError, match="float64"):
        tn.gradcheck(lambda x: x * 2, [tn.tensor([1.0], requires_grad=True)])


def test_gradcheck_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="no input requires grad"):
        tn.gradcheck(lambda x: x * 2, [tn.tensor(np.ones(2))])


def test_gradcheck_perturbs_inputs_of_any_memory_layout():
    x = tn.tensor(np.asfortranarray(np.arange(6.0).reshape(2, 3)) + 0.5, requires_grad=True)
    assert not x.data.flags.c_contiguous
    assert tn.gradcheck(lambda x: (x * x).sum(dim=0), [x])
