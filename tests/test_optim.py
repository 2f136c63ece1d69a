"""Optimizers and schedules against their update rules worked out by hand with NumPy."""

import math
import pickle

import numpy as np
import pytest

import tinynorm
from tinynorm import backend
from tinynorm.nn import Parameter
from tinynorm.optim import SGD, Adam, AdamW, Optimizer
from tinynorm.optim.lr_scheduler import CosineAnnealingLR, LinearLR, StepLR

P0 = [1.0, -2.0, 0.5]
# The small second gradient makes v shrink, so amsgrad's max(v̂, v) differs from v.
GRADS = [[0.5, -1.0, 2.0], [0.01, 0.02, -0.01], [-0.3, 0.1, 0.05]]


def sgd_by_hand(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf, out = np.array(P0), None, []
    for grad in GRADS:
        g = np.array(grad) + weight_decay * p
        if momentum:
            buf = g if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def adam_by_hand(
    lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False
):
    (b1, b2), p = betas, np.array(P0)
    m, v, v_max, out = np.zeros(3), np.zeros(3), np.zeros(3), []
    for t, grad in enumerate(GRADS, start=1):
        g = np.array(grad)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_max = np.maximum(v_max, v)
        m_hat, v_hat = m / (1 - b1**t), (v_max if amsgrad else v) / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return out


CASES = {
    "sgd": (SGD, dict(lr=0.1), sgd_by_hand(0.1)),
    "sgd-momentum": (SGD, dict(lr=0.1, momentum=0.9), sgd_by_hand(0.1, 0.9)),
    "sgd-dampening": (SGD, dict(lr=0.1, momentum=0.9, dampening=0.3), sgd_by_hand(0.1, 0.9, 0.3)),
    "sgd-nesterov": (
        SGD,
        dict(lr=0.1, momentum=0.9, nesterov=True),
        sgd_by_hand(0.1, 0.9, nesterov=True),
    ),
    "sgd-weight-decay": (SGD, dict(lr=0.1, weight_decay=0.2), sgd_by_hand(0.1, weight_decay=0.2)),
    "sgd-all": (
        SGD,
        dict(lr=0.1, momentum=0.8, weight_decay=0.2, nesterov=True),
        sgd_by_hand(0.1, 0.8, weight_decay=0.2, nesterov=True),
    ),
    "adam": (Adam, dict(lr=0.1), adam_by_hand(0.1)),
    "adam-betas": (
        Adam,
        dict(lr=0.1, betas=(0.5, 0.9), eps=1e-3),
        adam_by_hand(0.1, (0.5, 0.9), 1e-3),
    ),
    "adam-weight-decay": (
        Adam,
        dict(lr=0.1, weight_decay=0.2),
        adam_by_hand(0.1, weight_decay=0.2),
    ),
    "adam-amsgrad": (Adam, dict(lr=0.1, amsgrad=True), adam_by_hand(0.1, amsgrad=True)),
    "adamw": (AdamW, dict(lr=0.1), adam_by_hand(0.1, weight_decay=1e-2, decoupled=True)),
    "adamw-amsgrad": (
        AdamW,
        dict(lr=0.1, weight_decay=0.2, amsgrad=True),
        adam_by_hand(0.1, weight_decay=0.2, amsgrad=True, decoupled=True),
    ),
}


def make_param(dtype=np.float32):
    return Parameter(np.array(P0, dtype=dtype))


def set_grad(p, grad):
    p.grad = tinynorm.Tensor(np.array(grad, dtype=p.dtype))


def state_arrays(optimizer):
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, np.ndarray)]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_three_steps_match_the_rule_by_hand(name, dtype):
    cls, kwargs, expected = CASES[name]
    p = make_param(dtype)
    data = p.data
    optimizer = cls([p], **kwargs)
    for grad, want in zip(GRADS, expected, strict=True):
        set_grad(p, grad)
        optimizer.step()
        tol = 1e-12 if dtype == np.float64 else 1e-6
        np.testing.assert_allclose(p.data, want, rtol=tol, atol=tol)
    assert p.data is data and p.data.dtype == dtype  # updated in place, dtype kept
    assert all(a.dtype == dtype for a in state_arrays(optimizer))


def test_amsgrad_case_exercises_the_max():
    assert not np.allclose(adam_by_hand(0.1)[-1], adam_by_hand(0.1, amsgrad=True)[-1])


@pytest.mark.parametrize("name", CASES)
def test_float32_survives_numpy_float64_hyperparameters(name):
    cls, kwargs, _ = CASES[name]
    p = make_param(np.float32)
    optimizer = cls([p], **kwargs)
    optimizer.param_groups[0]["lr"] = np.float64(0.1)  # e.g. as loaded from a checkpoint
    for grad in GRADS:
        p.grad = tinynorm.Tensor(np.array(grad))  # a float64 gradient
        optimizer.step()
    assert p.data.dtype == np.float32
    assert all(a.dtype == np.float32 for a in state_arrays(optimizer))


def test_param_groups_use_their_own_lr():
    a, b = make_param(), make_param()
    optimizer = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]
    assert optimizer.param_groups[1]["momentum"] == 0.9  # defaults fill in the rest
    set_grad(a, GRADS[0])
    set_grad(b, GRADS[0])
    optimizer.step()
    np.testing.assert_allclose(a.data, np.array(P0) - 0.1 * np.array(GRADS[0]), rtol=1e-6)
    np.testing.assert_allclose(b.data, np.array(P0) - 0.5 * np.array(GRADS[0]), rtol=1e-6)


def test_zero_grad():
    p = make_param()
    optimizer = SGD([p], lr=0.1)
    set_grad(p, GRADS[0])
    grad = p.grad.data
    optimizer.zero_grad(set_to_none=False)
    assert p.grad.dtype == np.float32 and not p.grad.data.any()
    np.testing.assert_array_equal(grad, GRADS[0])  # a shared gradient array is not zeroed
    optimizer.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("name", CASES)
def test_parameters_without_grad_are_untouched(name):
    cls, kwargs, _ = CASES[name]
    p, frozen = make_param(), make_param()
    optimizer = cls([p, frozen], **kwargs)
    for grad in GRADS:
        set_grad(p, grad)
        optimizer.step()
    np.testing.assert_array_equal(frozen.data, P0)
    assert frozen not in optimizer.state


@pytest.mark.parametrize("name", ["sgd-all", "adam-amsgrad", "adamw"])
def test_state_dict_round_trip_continues_identically(name):
    cls, kwargs, _ = CASES[name]
    p = make_param()
    optimizer = cls([p], **kwargs)
    for grad in GRADS[:2]:
        set_grad(p, grad)
        optimizer.step()
    checkpoint = optimizer.state_dict()
    saved = Parameter(p.data.copy())
    assert all(
        isinstance(v, np.ndarray)
        for s in checkpoint["state"].values()
        for v in s.values()
        if not isinstance(v, int)
    )

    set_grad(p, GRADS[2])
    optimizer.step()  # the checkpoint must be a snapshot, not a view of the live state
    checkpoint = pickle.loads(pickle.dumps(checkpoint))
    resumed = cls([saved], lr=123.0)
    resumed.load_state_dict(checkpoint)
    assert resumed.param_groups[0]["lr"] == kwargs["lr"]
    set_grad(saved, GRADS[2])
    resumed.step()
    np.testing.assert_array_equal(saved.data, p.data)


def test_load_state_dict_rejects_a_different_layout():
    checkpoint = SGD([make_param(), make_param()], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="groups"):
        SGD([make_param()], lr=0.1).load_state_dict(checkpoint)


def test_step_lr():
    optimizer = SGD([{"params": [make_param()]}, {"params": [make_param()], "lr": 1.0}], lr=0.1)
    scheduler = StepLR(optimizer, step_size=3, gamma=0.5)
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.1, 1.0]
    for epoch in range(10):
        expected = [0.1 * 0.5 ** (epoch // 3), 1.0 * 0.5 ** (epoch // 3)]
        assert scheduler.last_epoch == epoch
        np.testing.assert_allclose(scheduler.get_last_lr(), expected, rtol=1e-12)
        np.testing.assert_allclose([g["lr"] for g in optimizer.param_groups], expected)
        scheduler.step()
    again = StepLR(optimizer, step_size=3)  # a new scheduler keeps the stored base lrs
    assert again.base_lrs == [0.1, 1.0]


def test_cosine_annealing_lr():
    optimizer = SGD([make_param()], lr=0.1)
    scheduler = CosineAnnealingLR(optimizer, T_max=8, eta_min=0.01)
    lrs = []
    for _ in range(9):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01)


def test_linear_lr_warms_up_then_holds():
    optimizer = SGD([make_param()], lr=0.2)
    scheduler = LinearLR(optimizer, start_factor=0.25, total_iters=3)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    np.testing.assert_allclose(lrs, [0.05, 0.1, 0.15, 0.2, 0.2, 0.2], rtol=1e-12)


@pytest.mark.parametrize("bad", [dict(start_factor=0.0), dict(end_factor=1.5), dict(total_iters=0)])
def test_linear_lr_rejects_bad_factors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LinearLR(SGD([make_param()], lr=0.1), **bad)


def test_scheduler_resumes_from_its_state_dict():
    optimizer = SGD([make_param()], lr=0.1)
    scheduler = CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(4):
        scheduler.step()
    checkpoint = (optimizer.state_dict(), scheduler.state_dict())
    scheduler.step()

    resumed_optimizer = SGD([make_param()], lr=0.5)
    resumed_optimizer.load_state_dict(checkpoint[0])
    resumed = CosineAnnealingLR(resumed_optimizer, T_max=10, last_epoch=3)
    resumed.load_state_dict(checkpoint[1])
    resumed.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_resuming_a_schedule_needs_initial_lr():
    with pytest.raises(KeyError, match="initial_lr"):
        StepLR(SGD([make_param()], lr=0.1), step_size=2, last_epoch=5)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGD([p], lr=-0.1),
        lambda p: SGD([p], lr=float("nan")),
        lambda p: SGD([p], momentum=-0.5),
        lambda p: SGD([p], weight_decay=-1e-4),
        lambda p: SGD([p], nesterov=True),
        lambda p: SGD([p], momentum=0.9, dampening=0.1, nesterov=True),
        lambda p: SGD([{"params": [p], "lr": -1.0}], lr=0.1),
        lambda p: Adam([p], lr=-1e-3),
        lambda p: Adam([p], betas=(1.0, 0.999)),
        lambda p: Adam([p], betas=(0.9, -0.1)),
        lambda p: Adam([p], eps=-1e-8),
        lambda p: AdamW([p], weight_decay=-0.01),
        lambda p: SGD([], lr=0.1),
        lambda p: Adam([{"params": []}]),
        lambda p: SGD([p, p], lr=0.1),
        lambda p: StepLR(SGD([p]), step_size=0),
        lambda p: CosineAnnealingLR(SGD([p]), T_max=0),
    ],
)
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make(make_param())


def test_a_single_tensor_is_not_a_parameter_list():
    with pytest.raises(TypeError):
        SGD(make_param(), lr=0.1)


def test_base_optimizer_needs_an_update_rule():
    p = make_param()
    set_grad(p, GRADS[0])
    with pytest.raises(NotImplementedError):
        Optimizer([p], {"lr": 0.1}).step()


@pytest.mark.parametrize("name", CASES)
def test_matches_pytorch(name):
    torch = pytest.importorskip("torch")
    cls, kwargs, _ = CASES[name]
    p, tp = make_param(np.float64), torch.tensor(P0, dtype=torch.float64, requires_grad=True)
    optimizer, reference = cls([p], **kwargs), getattr(torch.optim, cls.__name__)([tp], **kwargs)
    for grad in GRADS:
        set_grad(p, grad)
        tp.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        reference.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_cupy_matches_numpy(name):
    try:
        cupy = backend.cupy_or_error()
    except RuntimeError as err:
        pytest.skip(str(err))
    cls, kwargs, expected = CASES[name]
    p = Parameter(cupy.asarray(P0, dtype=cupy.float32))
    optimizer = cls([p], **kwargs)
    for grad in GRADS:
        p.grad = tinynorm.Tensor(cupy.asarray(grad, dtype=cupy.float32))
        optimizer.step()
    assert p.data.dtype == np.float32 and backend.is_cupy(p.data)
    np.testing.assert_allclose(p.numpy(), expected[-1], rtol=1e-5, atol=1e-6)
