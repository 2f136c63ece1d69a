"""Forward values of the norm layers in more settings than test_variants.py's defaults (1-d and
3-d inputs, affine off, every group count, clipped batch renorm, a smaller eval batch), written
from the formulas of SPEC §3 and the layer docstrings over `tinynorm.reference.standardize`
(float64 tight, float32 loose), and numerical stability on x = 10⁴ + N(0, 1)."""

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn, reference
from tinynorm.nn.utils import weight_norm

TOL = {np.float64: {"rtol": 1e-10, "atol": 1e-10}, np.float32: {"rtol": 1e-4, "atol": 2e-5}}


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request):
    return request.param


# ---- references --------------------------------------------------------------------------


def channel(a, ndim):
    """A per-channel vector (C,) broadcastable against (N, C, *spatial)."""
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def standardize(x, axes, eps, mean=None, var=None):
    """(x - μ)/sqrt(σ² + ε) by `tinynorm.reference.standardize`, with μ and the biased σ² over
    `axes` unless given."""
    fixed = None if mean is None else (mean, (var + eps) ** -0.5)
    return reference.standardize(x, axes, eps, fixed=fixed)[0]


def bn_axes(x):
    return (0, *range(2, x.ndim))


def in_axes(x):
    return tuple(range(2, x.ndim))


def ln_axes(x):
    return tuple(range(1, x.ndim))


def affine(y, layer):
    """γ·y + β per channel with the layer's parameters."""
    return y * channel(layer.weight.numpy(), y.ndim) + channel(layer.bias.numpy(), y.ndim)


def check(layer, x, expected, dtype):
    """The layer's output on x (cast to dtype) equals the float64 reference."""
    y = layer(tn.tensor(x.astype(dtype)))
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), expected, **TOL[dtype])


def make(layer, dtype, rng):
    """`layer` in `dtype` with random γ, β (and other parameters left as they are)."""
    layer.to(dtype)
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if p is not None:
            p.data[...] = (
                rng.uniform(0.5, 1.5, p.shape) if name == "weight" else rng.normal(size=p.shape)
            )
    return layer


def data(rng, shape, dtype):
    """Input values exactly representable in dtype, as float64 for the references."""
    return (0.7 + 1.8 * rng.standard_normal(shape)).astype(dtype).astype(np.float64)


def set_running(layer, rng, std=False):
    C = layer.num_features
    layer.running_mean.data[...] = rng.normal(size=C)
    name = "running_std" if std else "running_var"
    getattr(layer, name).data[...] = rng.uniform(0.5, 2.0, C)
    return layer.running_mean.numpy().astype(np.float64), getattr(layer, name).numpy().astype(
        np.float64
    )


# ---- batch norm, batch renorm, mean-only batch norm ---------------------------------------


@pytest.mark.parametrize(
    ("cls", "shape"),
    [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm1d, (3, 4, 5)), (nn.BatchNorm2d, (3, 4, 3, 2))],
)
def test_batch_norm(rng, dtype, cls, shape):
    bn = make(cls(4), dtype, rng)
    x = data(rng, shape, dtype)
    check(bn, x, affine(standardize(x, bn_axes(x), 1e-5), bn), dtype)
    mean, var = set_running(bn.eval(), rng)
    nd = len(shape)
    expected = standardize(x, None, 1e-5, channel(mean, nd), channel(var, nd))
    check(bn, x, affine(expected, bn), dtype)


def test_batch_norm_without_affine(rng, dtype):
    bn = nn.BatchNorm2d(3, affine=False, eps=1e-3).to(dtype)
    x = data(rng, (4, 3, 2, 2), dtype)
    check(bn, x, standardize(x, bn_axes(x), 1e-3), dtype)


@pytest.mark.parametrize(
    ("cls", "shape"), [(nn.BatchRenorm1d, (6, 4)), (nn.BatchRenorm2d, (3, 4, 3, 2))]
)
def test_batch_renorm(rng, dtype, cls, shape):
    """r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B - μ)/σ, ±dmax), x̂ = (x - μ_B)/σ_B·r + d;
    two channels clipped (one at each side) and two not, for r and d each."""
    eps, rmax, dmax = 1e-5, 1.5, 0.2
    brn = make(cls(4, rmax=rmax, dmax=dmax, warmup_steps=0, rmax_steps=0, dmax_steps=0), dtype, rng)
    x = data(rng, shape, dtype)
    nd = len(shape)
    mu_b, sigma_b = x.mean(bn_axes(x)), np.sqrt(x.var(bn_axes(x)) + eps)
    sigma = sigma_b * np.array([0.5, 1.2, 3.0, 0.9])  # σ_B/σ = 2, 0.83, 0.33, 1.1
    mu = mu_b - sigma * np.array([0.5, -0.1, 0.05, -1.0])  # (μ_B - μ)/σ
    brn.running_mean.data[...], brn.running_std.data[...] = mu, sigma
    mu, sigma = brn.running_mean.numpy().astype(float), brn.running_std.numpy().astype(float)
    r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
    d = np.clip((mu_b - mu) / sigma, -dmax, dmax)
    np.testing.assert_allclose(r, [1.5, 1 / 1.2, 1 / 1.5, 1 / 0.9], rtol=1e-5)
    np.testing.assert_allclose(d, [0.2, -0.1, 0.05, -0.2], rtol=1e-5)
    xhat = (x - channel(mu_b, nd)) / channel(sigma_b, nd) * channel(r, nd) + channel(d, nd)
    check(brn, x, affine(xhat, brn), dtype)

    mean, std = set_running(brn.eval(), rng, std=True)
    check(brn, x, affine((x - channel(mean, nd)) / channel(std, nd), brn), dtype)


@pytest.mark.parametrize(
    ("cls", "shape"), [(nn.MeanOnlyBatchNorm1d, (5, 3)), (nn.MeanOnlyBatchNorm2d, (3, 3, 2, 4))]
)
def test_mean_only_batch_norm(rng, dtype, cls, shape):
    mobn = make(cls(3), dtype, rng)
    beta = channel(mobn.bias.numpy(), len(shape))
    x = data(rng, shape, dtype)
    check(mobn, x, x - x.mean(bn_axes(x), keepdims=True) + beta, dtype)
    mobn.eval().running_mean.data[...] = rng.normal(size=3)
    check(mobn, x, x - channel(mobn.running_mean.numpy(), len(shape)) + beta, dtype)


# ---- layer, instance and group norm ----------------------------------------------------------


@pytest.mark.parametrize(
    ("normalized_shape", "shape"),
    [(5, (4, 5)), (4, (2, 3, 2, 4)), ((2, 4), (2, 3, 2, 4)), ((3, 2, 4), (2, 3, 2, 4))],
)
def test_layer_norm(rng, dtype, normalized_shape, shape):
    ln = make(nn.LayerNorm(normalized_shape), dtype, rng)
    assert ln.weight.shape == ln.normalized_shape == tuple(np.atleast_1d(normalized_shape))
    x = data(rng, shape, dtype)
    axes = tuple(range(len(shape) - len(ln.normalized_shape), len(shape)))
    y = standardize(x, axes, 1e-5)
    check(ln, x, y * ln.weight.numpy() + ln.bias.numpy(), dtype)
    check(nn.LayerNorm(normalized_shape, elementwise_affine=False).to(dtype), x, y, dtype)


@pytest.mark.parametrize(
    ("cls", "shape"), [(nn.InstanceNorm1d, (3, 4, 5)), (nn.InstanceNorm2d, (3, 4, 3, 2))]
)
def test_instance_norm(rng, dtype, cls, shape):
    x = data(rng, shape, dtype)
    y = standardize(x, in_axes(x), 1e-5)
    check(cls(4).to(dtype), x, y, dtype)
    inorm = make(cls(4, affine=True), dtype, rng)
    check(inorm, x, affine(y, inorm), dtype)
    check(inorm.eval(), x, affine(y, inorm), dtype)  # no running stats: eval as training


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm(rng, dtype, groups):
    gn = make(nn.GroupNorm(groups, 6), dtype, rng)
    x = data(rng, (3, 6, 2, 3), dtype)
    y = standardize(x.reshape(3, groups, -1), 2, 1e-5).reshape(x.shape)
    check(gn, x, affine(y, gn), dtype)
    if groups == 1:  # LayerNorm over (C, H, W)
        np.testing.assert_allclose(y, standardize(x, ln_axes(x), 1e-5), rtol=1e-12)
    if groups == 6:  # InstanceNorm
        np.testing.assert_allclose(y, standardize(x, in_axes(x), 1e-5), rtol=1e-12)


# ---- mixtures: batch-instance, switchable, batch-layer norm -----------------------------------


def test_batch_instance_norm(rng, dtype):
    """y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β, BN part on running stats in eval."""
    bin_ = make(nn.BatchInstanceNorm2d(4), dtype, rng)
    bin_.rho.data[...] = [0.0, 0.3, 0.8, 1.0]
    rho = channel(bin_.rho.numpy(), 4)
    x = data(rng, (3, 4, 2, 3), dtype)
    x_in = standardize(x, in_axes(x), 1e-5)
    x_bn = standardize(x, bn_axes(x), 1e-5)
    check(bin_, x, affine(rho * x_bn + (1 - rho) * x_in, bin_), dtype)
    mean, var = set_running(bin_.eval(), rng)
    x_bn = standardize(x, None, 1e-5, channel(mean, 4), channel(var, 4))
    check(bin_, x, affine(rho * x_bn + (1 - rho) * x_in, bin_), dtype)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_switchable_norm(rng, dtype):
    """μ = Σ_k softmax(λ)_k μ_k, σ² = Σ_k softmax(λ')_k σ²_k over k = IN, LN, BN."""
    sn = make(nn.SwitchableNorm2d(4), dtype, rng)
    sn.mean_weight.data[...] = [0.5, -1.0, 1.2]
    sn.var_weight.data[...] = [-0.3, 0.8, 0.1]
    wm, wv = (
        softmax(sn.mean_weight.numpy().astype(float)),
        softmax(sn.var_weight.numpy().astype(float)),
    )
    x = data(rng, (3, 4, 2, 3), dtype)
    moments = [
        (x.mean(a, keepdims=True), x.var(a, keepdims=True))
        for a in (in_axes(x), ln_axes(x), bn_axes(x))
    ]

    def expected(moments):
        mean = sum(w * m for w, (m, _) in zip(wm, moments))
        var = sum(w * v for w, (_, v) in zip(wv, moments))
        return affine(standardize(x, None, 1e-5, mean, var), sn)

    check(sn, x, expected(moments), dtype)
    mean, var = set_running(sn.eval(), rng)
    check(sn, x, expected([*moments[:2], (channel(mean, 4), channel(var, 4))]), dtype)


@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2, 3)])
def test_batch_layer_norm(rng, dtype, shape):
    """y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(C) + β, δ = 1e-4, ε = 1e-3, m the
    training batch size (kept for eval); eval uses the running stats, or the batch's own with
    eval_batch_stats=True."""
    eps, delta, C = 1e-3, 1e-4, shape[1]

    def expected(x, x_bn, m, layer):
        x_ln = standardize(x, ln_axes(x), eps)
        return affine(((1 / m - delta) * x_ln + (1 - 1 / m - delta) * x_bn) / np.sqrt(C), layer)

    bln = make(nn.BatchLayerNorm(C), dtype, rng)
    x = data(rng, shape, dtype)
    m = shape[0]
    check(bln, x, expected(x, standardize(x, bn_axes(x), eps), m, bln), dtype)

    mean, var = set_running(bln.eval(), rng)
    x2 = data(rng, (2, *shape[1:]), dtype)  # a smaller test batch: m stays the training size
    nd = len(shape)
    x_bn = standardize(x2, None, eps, channel(mean, nd), channel(var, nd))
    check(bln, x2, expected(x2, x_bn, m, bln), dtype)

    bln.eval_batch_stats = True
    check(bln, x2, expected(x2, standardize(x2, bn_axes(x2), eps), m, bln), dtype)


# ---- weight normalization --------------------------------------------------------------------


def test_weight_norm_forward(rng):
    lin = nn.Linear(5, 3).double()
    w0 = lin.weight.numpy().copy()
    weight_norm(lin)
    assert lin.weight_g.shape == (3, 1) and lin.weight_v.shape == (3, 5)
    np.testing.assert_allclose(lin.weight_g.numpy()[:, 0], np.linalg.norm(w0, axis=1))
    np.testing.assert_allclose(lin.weight.numpy(), w0, rtol=1e-12)  # unchanged at first
    lin.weight_g.data[...] = rng.uniform(0.5, 2, (3, 1))
    lin.weight_v.data[...] = v = rng.standard_normal((3, 5))
    w = lin.weight_g.numpy() * v / np.linalg.norm(v, axis=1, keepdims=True)
    x = rng.standard_normal((4, 5))
    y = lin(tn.tensor(x)).numpy()
    np.testing.assert_allclose(y, x @ w.T + lin.bias.numpy(), rtol=1e-12)


def test_weight_norm_conv_normalizes_per_output_channel(rng):
    conv = weight_norm(nn.Conv2d(2, 3, 3, padding=1).double())
    assert conv.weight_g.shape == (3, 1, 1, 1)
    conv.weight_g.data[...] = g = rng.uniform(0.5, 2, (3, 1, 1, 1))
    v = conv.weight_v.numpy()
    plain = nn.Conv2d(2, 3, 3, padding=1).double()
    plain.weight.data[...] = g * v / np.sqrt((v**2).sum(axis=(1, 2, 3), keepdims=True))
    plain.bias.data[...] = conv.bias.numpy()
    x = tn.tensor(rng.standard_normal((2, 2, 4, 4)))
    np.testing.assert_allclose(conv(x).numpy(), plain(x).numpy(), rtol=1e-12)


# ---- stability -------------------------------------------------------------------------------


def group_axes_view(y, groups):
    return y.reshape(y.shape[0], groups, -1), 2


STABILITY = {
    "BatchNorm2d": (lambda: nn.BatchNorm2d(4), lambda y: (y, bn_axes(y))),
    "LayerNorm": (lambda: nn.LayerNorm((4, 16, 16)), lambda y: (y, ln_axes(y))),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), lambda y: group_axes_view(y, 2)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(4), lambda y: (y, in_axes(y))),
}


@pytest.mark.parametrize("name", STABILITY)
def test_large_offset_float32_gives_unit_variance(rng, name):
    """x = 10⁴ + N(0, 1) in float32: no E[x²] - E[x]² cancellation in the statistics."""
    make_layer, view = STABILITY[name]
    x = (1e4 + rng.standard_normal((8, 4, 16, 16))).astype(np.float32)
    y = make_layer()(tn.tensor(x))
    assert y.dtype == np.float32
    values, axes = view(y.numpy().astype(np.float64))
    np.testing.assert_allclose(values.mean(axis=axes), 0, atol=1e-3)
    np.testing.assert_allclose(values.var(axis=axes), 1, atol=1e-3)


def test_large_offset_batch_norm_running_stats(rng):
    x = (1e4 + rng.standard_normal((8, 4, 16, 16))).astype(np.float32)
    bn = nn.BatchNorm2d(4, momentum=1.0)
    bn(tn.tensor(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(bn.running_mean.numpy(), x64.mean((0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(bn.running_var.numpy(), x64.var((0, 2, 3), ddof=1), rtol=1e-3)
