"""Float64 finite-difference gradient checks of every norm layer (SPEC §8), in training and
eval mode, affine on and off, w.r.t. the input and every parameter; batch renorm's
constant-in-backward r and d checked where finite differences can see them and by hand where
they cannot."""

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn
from tinynorm.nn.utils import weight_norm

# name -> (factory(affine) -> layer, input shape)
LAYERS = {
    "BatchNorm1d-2d": (lambda a: nn.BatchNorm1d(3, affine=a), (5, 3)),
    "BatchNorm1d-2d-blocks": (lambda a: nn.BatchNorm1d(70, affine=a), (4, 70)),  # 2 column blocks
    "BatchNorm1d-3d": (lambda a: nn.BatchNorm1d(3, affine=a), (3, 3, 4)),
    "BatchNorm2d": (lambda a: nn.BatchNorm2d(3, affine=a), (3, 3, 2, 3)),
    "BatchNorm2d-cumulative": (lambda a: nn.BatchNorm2d(3, momentum=None, affine=a), (3, 3, 2, 2)),
    # the default schedule starts at rmax=1, dmax=0: plain batch norm, which finite
    # differences can check (the clipped cases are tested below)
    "BatchRenorm1d": (lambda a: nn.BatchRenorm1d(3, affine=a), (5, 3)),
    "BatchRenorm2d": (lambda a: nn.BatchRenorm2d(3, affine=a), (3, 3, 2, 2)),
    "LayerNorm-last": (lambda a: nn.LayerNorm(4, elementwise_affine=a), (3, 2, 4)),
    "LayerNorm-CHW": (lambda a: nn.LayerNorm((2, 3, 2), elementwise_affine=a), (3, 2, 3, 2)),
    "LayerNorm-no-bias": (
        lambda a: nn.LayerNorm((2, 4), elementwise_affine=a, bias=False),
        (3, 2, 4),
    ),
    "InstanceNorm1d": (lambda a: nn.InstanceNorm1d(3, affine=a), (2, 3, 5)),
    "InstanceNorm2d": (lambda a: nn.InstanceNorm2d(3, affine=a), (2, 3, 2, 3)),
    "InstanceNorm2d-tracked": (
        lambda a: nn.InstanceNorm2d(3, affine=a, track_running_stats=True),
        (2, 3, 2, 3),
    ),
    "GroupNorm-G2": (lambda a: nn.GroupNorm(2, 4, affine=a), (2, 4, 2, 3)),
    "GroupNorm-G1": (lambda a: nn.GroupNorm(1, 4, affine=a), (2, 4, 3)),
    "GroupNorm-GC": (lambda a: nn.GroupNorm(4, 4, affine=a), (2, 4, 2, 2)),
    "MeanOnlyBatchNorm1d": (lambda a: nn.MeanOnlyBatchNorm1d(3, affine=a), (5, 3)),
    "MeanOnlyBatchNorm2d": (lambda a: nn.MeanOnlyBatchNorm2d(3, affine=a), (3, 3, 2, 2)),
    "BatchInstanceNorm2d": (lambda a: nn.BatchInstanceNorm2d(3, affine=a), (3, 3, 2, 2)),
    "SwitchableNorm2d": (lambda a: nn.SwitchableNorm2d(3, affine=a), (3, 3, 2, 2)),
    "BatchLayerNorm-2d": (lambda a: nn.BatchLayerNorm(3, affine=a), (5, 3)),
    "BatchLayerNorm-4d": (lambda a: nn.BatchLayerNorm(3, affine=a), (3, 3, 2, 2)),
}


def randomized(layer, rng):
    """`layer` in float64 with non-trivial parameters: γ, β random, BIN's gate ρ inside (0, 1)
    (at its initial 1 the clip would cut off the finite difference), SN's logits random."""
    layer.double()
    for name, p in layer.named_parameters():
        if name == "rho":
            p.data[...] = rng.uniform(0.2, 0.8, p.shape)
        else:
            p.data[...] += 0.5 * rng.standard_normal(p.shape)
    return layer


def warm_up(layer, shape, rng, steps=3):
    """A few training steps on shifted, scaled data: running estimates far from 0 and 1."""
    layer.train()
    for _ in range(steps):
        layer(tn.tensor(1.5 + 2 * rng.standard_normal(shape)))


def snapshot(layer):
    """A function that puts every buffer back as it is now: training forwards move the
    running estimates (and batch renorm's r and d, and its schedule, depend on them)."""
    saved = [(b, b.data.copy()) for b in layer.buffers()]

    def restore():
        for b, data in saved:
            b.data[...] = data

    return restore


def check_layer(layer, x):
    restore = snapshot(layer)

    def f(x, *params):
        restore()
        return layer(x)

    params = list(layer.parameters())
    assert tn.gradcheck(f, [x, *params])


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_gradcheck(rng, name, affine, training):
    factory, shape = LAYERS[name]
    layer = randomized(factory(affine), rng)
    assert bool(list(layer.parameters())) == (
        affine or name.startswith(("BatchInstance", "Switchable"))
    )
    warm_up(layer, shape, rng)
    layer.train(training)
    x = tn.tensor(0.5 + 1.5 * rng.standard_normal(shape), requires_grad=True)
    check_layer(layer, x)


@pytest.mark.parametrize(
    "name", ["LayerNorm-last", "LayerNorm-no-bias", "InstanceNorm2d", "GroupNorm-G2"]
)
def test_parameter_gradients_without_an_input_gradient(rng, name):
    """An input that needs no gradient: the per-sample norms skip dx and still get γ and β right."""
    factory, shape = LAYERS[name]
    layer = randomized(factory(True), rng)
    check_layer(layer, tn.tensor(0.5 + 1.5 * rng.standard_normal(shape)))


# ---- batch renorm: r and d are constants in the backward pass ------------------------------


def renorm_layer(rng, C=3, rmax=2.0, dmax=0.5):
    """A float64 BatchRenorm2d with constant limits and random γ, β."""
    layer = nn.BatchRenorm2d(C, rmax=rmax, dmax=dmax, warmup_steps=0, rmax_steps=0, dmax_steps=0)
    return randomized(layer, rng)


def batch_stats(x, eps=1e-5):
    return x.mean(axis=(0, 2, 3)), np.sqrt(x.var(axis=(0, 2, 3)) + eps)


def test_batch_renorm_gradcheck_with_saturated_r_and_d(rng):
    layer = renorm_layer(rng)
    x = tn.tensor(rng.standard_normal((4, 3, 2, 2)), requires_grad=True)
    mu_b, sigma_b = batch_stats(x.numpy())
    # σ_B/σ = 5, 1/5, 5: r at ±rmax; (μ_B - μ)/σ = 3, -3, 3: d at ±dmax, also after ±1e-6 steps
    sigma = sigma_b * np.array([0.2, 5.0, 0.2])
    layer.running_std.data[...] = sigma
    layer.running_mean.data[...] = mu_b - np.array([3.0, -3.0, 3.0]) * sigma
    check_layer(layer, x)
    layer.eval()
    check_layer(layer, x)


def test_batch_renorm_unsaturated_backward_is_batch_norm_with_gamma_times_r(rng):
    """With r = σ_B/σ and d = (μ_B - μ)/σ inside the limits, the forward equals (x - μ)/σ,
    but r and d are held constant in the backward pass: dx is batch norm's dx with γ
    replaced by γ·r, dγ = Σ dy·(x̂·r + d), dβ = Σ dy; finite differences disagree."""
    layer = renorm_layer(rng, rmax=3.0, dmax=5.0)
    xs = rng.standard_normal((4, 3, 2, 2)) * 1.3 + 0.4
    mu_b, sigma_b = batch_stats(xs)
    sigma = sigma_b * np.array([0.8, 1.25, 1.5])
    mu = mu_b + np.array([0.3, -0.2, 0.1]) * sigma
    r, d = sigma_b / sigma, (mu_b - mu) / sigma
    assert np.all((r < 3) & (r > 1 / 3)) and np.all(np.abs(d) < 5)
    layer.running_mean.data[...], layer.running_std.data[...] = mu, sigma
    restore = snapshot(layer)
    gamma, beta = layer.weight.numpy().copy(), layer.bias.numpy().copy()
    dy = rng.standard_normal(xs.shape)

    x = tn.tensor(xs, requires_grad=True)
    y = layer(x)
    y.backward(tn.tensor(dy))
    c = (1, -1, 1, 1)
    np.testing.assert_allclose(
        y.numpy(), (xs - mu.reshape(c)) / sigma.reshape(c) * gamma.reshape(c) + beta.reshape(c)
    )
    xhat = (xs - mu_b.reshape(c)) / sigma_b.reshape(c)
    np.testing.assert_allclose(
        layer.weight.grad.numpy(), (dy * (xhat * r.reshape(c) + d.reshape(c))).sum((0, 2, 3))
    )
    np.testing.assert_allclose(layer.bias.grad.numpy(), dy.sum((0, 2, 3)))

    bn = nn.BatchNorm2d(3).double()
    bn.weight.data[...], bn.bias.data[...] = gamma * r, beta
    x_bn = tn.tensor(xs, requires_grad=True)
    bn(x_bn).backward(tn.tensor(dy))
    np.testing.assert_allclose(x.grad.numpy(), x_bn.grad.numpy(), rtol=1e-10, atol=1e-12)

    restore()
    with pytest.raises(tn.GradcheckError):
        check_layer(layer, tn.tensor(xs, requires_grad=True))


# ---- weight normalization -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(4, 3), (5, 4)),
        (lambda: nn.Linear(4, 3, bias=False), (5, 4)),
        (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 3, 3)),
        (lambda: nn.Conv2d(2, 3, 2, bias=False), (2, 2, 3, 3)),
    ],
    ids=["linear", "linear-no-bias", "conv", "conv-no-bias"],
)
@pytest.mark.parametrize("dim", [0, None])
def test_weight_norm_gradcheck(rng, make, shape, dim):
    layer = weight_norm(make(), dim=dim).double()
    layer.weight_g.data[...] = rng.uniform(0.5, 2.0, layer.weight_g.shape)
    names = {name for name, _ in layer.named_parameters()}
    assert {"weight_g", "weight_v"} <= names and "weight" not in names
    x = tn.tensor(rng.standard_normal(shape), requires_grad=True)
    check_layer(layer, x)
    check_layer(layer.eval(), x)
