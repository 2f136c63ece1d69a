"""The test matrix of every norm variant in `tinynorm.variants.VARIANTS`: a variant added there
is checked here with no other change. For each: forward and backward against its NumPy
reference (`tinynorm.reference`, float64 tight, float32 loose), float64 finite-difference
gradients in training and eval mode, and, where PyTorch has the layer and is installed (CI
installs it), forward, backward and state against PyTorch. The GPU path of each variant with a
--norm name is in test_gpu_path.py."""

import copy
import importlib.util

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn
from tinynorm.variants import BY_KEY, VARIANTS

SHAPES = {4: (3, 4, 3, 5), 2: (6, 4)}  # C = 4: GroupNorm's 4 groups divide it
CASES = [pytest.param(v, rank, id=f"{v.name}-{rank}d") for v in VARIANTS for rank in v.ranks]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def build(variant, rank: int, rng, dtype=np.float64):
    """The variant's layer for SHAPES[rank] in `dtype`, its parameters and running estimates
    moved off their initial values (so that every term of the formulas shows)."""
    shape = SHAPES[rank]
    return randomized(variant.make(nn, shape).to(dtype), rng), shape


def randomized(layer, rng):
    """`layer` with its parameters and running estimates moved off their initial values."""
    for name, p in layer.named_parameters():
        if name == "rho":  # batch-instance norm's gate, inside (0, 1)
            p.data[...] = rng.uniform(0.2, 0.8, p.shape)
        elif name == "eps":  # a learned ε stays small and positive
            p.data[...] = rng.uniform(1e-3, 1e-2, p.shape)
        else:
            p.data[...] += 0.5 * rng.standard_normal(p.shape)
    for name, b in layer.named_buffers():
        if name in ("running_mean", "running_var", "running_std"):
            b.data[...] = rng.uniform(0.5, 1.5, b.shape)
    return layer


def test_every_variant_has_a_unique_name_and_key():
    names = [v.name for v in VARIANTS]
    assert len(set(names)) == len(names)
    assert all(hasattr(nn, name) for name in names)
    assert {"rms", "frn"} <= set(BY_KEY)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("variant", "rank"), CASES)
def test_forward_and_backward_match_the_reference_in_float64(rng, variant, rank, training):
    layer, shape = build(variant, rank, rng)
    layer.train(training)
    x = 0.5 + 1.5 * rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    expected_y = variant.reference(layer, x)
    expected_dx, expected_grads = variant.reference(layer, x, dy)  # before the step moves state
    xt = tn.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(tn.tensor(dy))
    close = {"rtol": 1e-9, "atol": 1e-10}
    np.testing.assert_allclose(y.numpy(), expected_y, **close)
    np.testing.assert_allclose(xt.grad.numpy(), expected_dx, **close)
    params = dict(layer.named_parameters())
    assert set(expected_grads) == set(params)
    for name, g in expected_grads.items():
        actual = params[name].grad.numpy()
        np.testing.assert_allclose(actual, g.reshape(actual.shape), err_msg=name, **close)


@pytest.mark.parametrize(("variant", "rank"), CASES)
def test_float32_forward_matches_the_float64_reference(rng, variant, rank):
    layer, shape = build(variant, rank, rng, np.float32)
    x = (0.5 + 1.5 * rng.standard_normal(shape)).astype(np.float32)
    expected = variant.reference(copy.deepcopy(layer).double(), x.astype(np.float64))
    y = layer(tn.tensor(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=2e-5)


def snapshot(layer):
    """A function that puts every buffer back as it is now (a training forward moves them)."""
    saved = [(b, b.data.copy()) for b in layer.buffers()]

    def restore():
        for b, data in saved:
            b.data[...] = data

    return restore


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("variant", "rank"), CASES)
def test_gradcheck(rng, variant, rank, training):
    """Finite differences in float64 w.r.t. the input and every parameter."""
    layer, shape = build(variant, rank, rng)
    layer.train(training)
    restore = snapshot(layer)

    def f(x, *params):
        restore()
        return layer(x)

    x = tn.tensor(0.5 + 1.5 * rng.standard_normal(shape), requires_grad=True)
    assert tn.gradcheck(f, [x, *layer.parameters()])


TORCH_CASES = [  # (make(nn), input shape): every variant PyTorch has, and other settings
    *(
        pytest.param(lambda nn, v=v, s=SHAPES[r]: v.make(nn, s), SHAPES[r], id=f"{v.name}-{r}d")
        for v in VARIANTS
        for r in v.ranks
        if v.in_torch
    ),
    pytest.param(
        lambda nn: nn.BatchNorm2d(4, momentum=None), SHAPES[4], id="BatchNorm2d-cumulative"
    ),
    pytest.param(
        lambda nn: nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        SHAPES[4],
        id="InstanceNorm2d-tracked",
    ),
]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install '.[compare]')")
@pytest.mark.parametrize(("make", "shape"), TORCH_CASES)
def test_against_torch(rng, make, shape):
    """Same state_dict keys; three training steps (output, input and parameter gradients,
    running estimates) and one eval step agree with PyTorch's layer in float64."""
    import torch

    ours = randomized(make(nn).double(), rng)
    theirs = make(torch.nn).double()
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in state.items()})
    close = {"rtol": 1e-9, "atol": 1e-11}
    for training in (True, True, True, False):
        ours.train(training)
        theirs.train(training)
        ours.zero_grad()
        theirs.zero_grad()
        x, dy = 0.5 + 1.5 * rng.standard_normal(shape), rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        xo = tn.tensor(x, requires_grad=True)
        yo = ours(xo)
        yo.backward(tn.tensor(dy))
        np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), **close)
        np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), **close)
        for (key, p), pt in zip(ours.named_parameters(), theirs.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), err_msg=key, **close)
        for key, value in theirs.state_dict().items():
            if key == "num_batches_tracked" and isinstance(ours, nn.InstanceNorm2d):
                continue  # PyTorch's InstanceNorm never counts batches; ours does
            np.testing.assert_allclose(
                ours.state_dict()[key].numpy(), value.numpy(), err_msg=key, **close
            )


@pytest.mark.parametrize(("variant", "rank"), CASES)
def test_reset_running_stats_restores_the_initial_estimates(rng, variant, rank):
    layer, shape = build(variant, rank, rng)
    fresh = variant.make(nn, shape).double().state_dict()
    layer(tn.tensor(rng.standard_normal(shape)))
    buffers = dict(layer.named_buffers())
    if not buffers:  # nothing tracked: nothing to reset
        return
    assert any(not np.array_equal(b.numpy(), fresh[k].numpy()) for k, b in buffers.items())
    layer.reset_running_stats()
    for key, b in layer.named_buffers():
        if key != "batch_size":  # batch-layer norm's last training batch size is no estimate
            np.testing.assert_array_equal(b.numpy(), fresh[key].numpy(), err_msg=key)


def test_rms_norm_is_pytorchs_formula_and_has_no_bias(rng):
    layer = nn.RMSNorm((3, 2)).double()
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert nn.RMSNorm(4, elementwise_affine=False).weight is None
    x = rng.standard_normal((5, 3, 2))
    expected = x / np.sqrt((x**2).mean(axis=(1, 2), keepdims=True) + np.finfo(np.float64).eps)
    np.testing.assert_allclose(layer(tn.tensor(x)).numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"does not end with normalized_shape \(3, 2\)"):
        layer(tn.tensor(rng.standard_normal((5, 2, 3))))


def test_filter_response_norm_thresholds_at_tau_and_learns_eps(rng):
    layer = nn.FilterResponseNorm2d(3, eps=1e-3, learnable_eps=True).double()
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias", "tau", "eps"]
    layer.tau.data[...] = [-0.5, 0.0, 0.5]
    x = rng.standard_normal((2, 3, 4, 4))
    eps = float(layer.eps.data[0])  # 1e-3 as stored in float32, then made float64
    y = x / np.sqrt((x**2).mean(axis=(2, 3), keepdims=True) + eps)
    z = layer(tn.tensor(x)).numpy()
    np.testing.assert_allclose(z, np.maximum(y, layer.tau.numpy().reshape(1, 3, 1, 1)), rtol=1e-12)
    assert (z[:, 2] >= 0.5).all() and (z[:, 2] == 0.5).any()
    assert "learnable_eps=True" in repr(layer)
    with pytest.raises(ValueError, match="expected 4D input"):
        layer(tn.tensor(rng.standard_normal((2, 3, 4))))
    with pytest.raises(TypeError, match="FilterResponseNorm2d: input dtype int32"):
        layer(tn.tensor(np.ones((2, 3, 4, 4), np.int32)))
