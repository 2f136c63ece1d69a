"""Norm layers' state and behaviour: running statistics against hand computations, batch
renorm's rmax/dmax schedule, inference fusion, BN scale invariance (seed 002), clear errors,
PyTorch's state_dict keys, and the learned mixing weights of BIN and SN."""

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.nn.utils import fuse_conv_bn, fuse_linear_bn


def batches(rng, shape, count=4, dtype=np.float32):
    """`count` batches whose mean and spread change from one to the next."""
    return [((k + 1) * rng.standard_normal(shape) + 2 * k - 1).astype(dtype) for k in range(count)]


def bn_moments(x, ddof=0):
    axes = (0, *range(2, x.ndim))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.var(axis=axes, ddof=ddof)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ---- running statistics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.BatchNorm1d(3), (3, 3)),  # m = 3: the unbiased factor m/(m-1) is 1.5
        (lambda: nn.BatchNorm1d(3), (2, 3, 4)),
        (lambda: nn.BatchNorm2d(3), (2, 3, 2, 3)),
        (lambda: nn.BatchInstanceNorm2d(3), (2, 3, 2, 3)),
        (lambda: nn.SwitchableNorm2d(3), (2, 3, 2, 3)),
        (lambda: nn.BatchLayerNorm(3), (2, 3, 2, 3)),
    ],
    ids=["BN1d-2d", "BN1d-3d", "BN2d", "BIN", "SN", "BLN"],
)
def test_running_stats_with_momentum(rng, make, shape):
    """running ← 0.9·running + 0.1·batch, with the unbiased batch variance."""
    layer = make()
    mean, var = np.zeros(3), np.ones(3)
    for x in batches(rng, shape):
        layer(tn.tensor(x))
        mu, v = bn_moments(x, ddof=1)
        mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * v
    close(layer.running_mean.numpy(), mean)
    close(layer.running_var.numpy(), var)
    assert layer.num_batches_tracked.numpy() == 4

    layer.eval()(tn.tensor(x))  # eval neither moves the estimates nor counts
    close(layer.running_mean.numpy(), mean)
    assert layer.num_batches_tracked.numpy() == 4


@pytest.mark.parametrize("cls", [nn.BatchNorm2d, nn.BatchLayerNorm])
def test_momentum_none_is_the_cumulative_average(rng, cls):
    """The seed's population estimate: mean of μ_B and mean of the unbiased σ²_B."""
    layer = cls(3, momentum=None)
    xs = batches(rng, (4, 3, 2, 2), count=5)
    for x in xs:
        layer(tn.tensor(x))
    stats = [bn_moments(x, ddof=1) for x in xs]
    close(layer.running_mean.numpy(), np.mean([m for m, _ in stats], axis=0))
    close(layer.running_var.numpy(), np.mean([v for _, v in stats], axis=0))
    assert layer.num_batches_tracked.numpy() == 5


def test_batch_renorm_moving_averages(rng):
    """μ += α(μ_B - μ), σ += α(σ_B - σ) with σ_B = sqrt(σ²_B + ε)."""
    eps = 1e-3
    brn = nn.BatchRenorm2d(3, momentum=0.2, eps=eps)
    assert "running_var" not in brn.state_dict()
    mu, sigma = np.zeros(3), np.ones(3)
    for x in batches(rng, (2, 3, 2, 2)):
        brn(tn.tensor(x))
        mu_b, var_b = bn_moments(x)
        mu, sigma = mu + 0.2 * (mu_b - mu), sigma + 0.2 * (np.sqrt(var_b + eps) - sigma)
    close(brn.running_mean.numpy(), mu)
    close(brn.running_std.numpy(), sigma)
    assert brn.num_batches_tracked.numpy() == 4


def test_batch_renorm_schedule():
    """rmax = 1, dmax = 0 before warmup, linear ramps after it, the final values from
    rmax_steps / dmax_steps on."""
    brn = nn.BatchRenorm1d(2, rmax=3, dmax=5, warmup_steps=2, rmax_steps=6, dmax_steps=4)
    expected = [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5), (2.5, 5), (3, 5), (3, 5)]
    x = tn.tensor(np.arange(8.0, dtype=np.float32).reshape(4, 2))
    for step, limits in enumerate(expected):
        assert brn.num_batches_tracked.numpy() == step
        assert brn.current_limits == pytest.approx(limits)
        brn(x)
    brn.num_batches_tracked.data[...] = 10**6
    assert brn.current_limits == pytest.approx((3, 5))


def test_batch_renorm_default_schedule_is_the_papers():
    brn = nn.BatchRenorm2d(2)
    for step, limits in [(0, (1, 0)), (5000, (1, 0)), (15000, (1 + 2 * 10 / 35, 2.5))]:
        brn.num_batches_tracked.data[...] = step
        assert brn.current_limits == pytest.approx(limits)
    for step in (40000, 10**6):
        brn.num_batches_tracked.data[...] = step
        assert brn.current_limits == pytest.approx((3, 5))
    brn.num_batches_tracked.data[...] = 25000
    assert brn.current_limits == pytest.approx((1 + 2 * 20 / 35, 5))


def test_batch_renorm_constant_limits():
    brn = nn.BatchRenorm2d(2, rmax=2, dmax=0.5, warmup_steps=0, rmax_steps=0, dmax_steps=0)
    assert brn.current_limits == (2, 0.5)
    brn(tn.randn(3, 2, 2, 2))
    assert brn.current_limits == (2, 0.5)


def test_batch_renorm_forward_follows_the_schedule(rng):
    """With the moving averages far off, the output is plain BN's during warmup and the
    clipped correction once the limits have opened."""
    x = tn.tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32))
    bn = nn.BatchNorm2d(2)
    brn = nn.BatchRenorm2d(2)
    far = ([10, -1000], [0.01, 100])  # σ_B/σ ≈ 100, 0.01 and (μ_B - μ)/σ ≈ -1000, 10
    brn.running_mean.data[...], brn.running_std.data[...] = far
    close(brn(x).numpy(), bn(x).numpy())

    brn.running_mean.data[...], brn.running_std.data[...] = far
    brn.num_batches_tracked.data[...] = 40000  # rmax = 3, dmax = 5: r = 3, 1/3 and d = -5, 5
    r, d = np.array([3, 1 / 3]).reshape(1, 2, 1, 1), np.array([-5, 5]).reshape(1, 2, 1, 1)
    close(brn(x).numpy(), bn(x).numpy() * r + d, rtol=1e-5, atol=1e-5)


def test_instance_norm_running_stats(rng):
    """Batch average of the instance means and unbiased (S/(S-1)) instance variances;
    eval normalizes with them."""
    inorm = nn.InstanceNorm2d(3, momentum=0.1, track_running_stats=True)
    mean, var = np.zeros(3), np.ones(3)
    for x in batches(rng, (2, 3, 2, 3), count=3):
        inorm(tn.tensor(x))
        x64 = x.astype(np.float64)
        mean = 0.9 * mean + 0.1 * x64.mean(axis=(2, 3)).mean(axis=0)
        var = 0.9 * var + 0.1 * x64.var(axis=(2, 3), ddof=1).mean(axis=0)
    close(inorm.running_mean.numpy(), mean)
    close(inorm.running_var.numpy(), var)
    y = inorm.eval()(tn.tensor(x)).numpy()
    c = (1, 3, 1, 1)
    close(y, (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + 1e-5), rtol=1e-4, atol=1e-5)


def test_instance_norm_without_tracking_has_no_running_stats(rng):
    inorm = nn.InstanceNorm2d(3)
    inorm(tn.randn(2, 3, 2, 2))
    assert inorm.running_mean is None and list(inorm.state_dict()) == []


def test_mean_only_batch_norm_running_mean(rng):
    mobn = nn.MeanOnlyBatchNorm2d(3)
    assert list(mobn.state_dict()) == ["bias", "running_mean", "num_batches_tracked"]
    mean = np.zeros(3)
    for x in batches(rng, (2, 3, 2, 2)):
        mobn(tn.tensor(x))
        mean = 0.9 * mean + 0.1 * bn_moments(x)[0]
    close(mobn.running_mean.numpy(), mean)


# ---- fusion ----------------------------------------------------------------------------------


def trained_pair(rng, layer, bn, shape, affine):
    if affine:
        bn.weight.data[...] = rng.uniform(0.5, 2, bn.num_features)
        bn.bias.data[...] = rng.standard_normal(bn.num_features)
    for x in batches(rng, shape, count=3):
        bn(layer(tn.tensor(x)))
    return layer.eval(), bn.eval()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_fuse_conv_bn_equals_the_pair_in_eval(rng, bias, affine):
    conv, bn = trained_pair(
        rng,
        nn.Conv2d(3, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4, affine=affine),
        (2, 3, 5, 5),
        affine,
    )
    fused = fuse_conv_bn(conv, bn)
    assert isinstance(fused, nn.Conv2d) and fused.bias is not None
    assert (conv.bias is None) != bias  # the original is left as it was
    x = tn.tensor(rng.standard_normal((2, 3, 5, 5)).astype(np.float32))
    close(fused(x).numpy(), bn(conv(x)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_fuse_linear_bn_equals_the_pair_in_eval(rng, affine):
    lin, bn = trained_pair(rng, nn.Linear(5, 4), nn.BatchNorm1d(4, affine=affine), (8, 5), affine)
    fused = fuse_linear_bn(lin, bn)
    x = tn.tensor(rng.standard_normal((6, 5)).astype(np.float32))
    close(fused(x).numpy(), bn(lin(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_fuse_rejects_a_mismatched_batch_norm():
    with pytest.raises(ValueError, match="cannot fuse 3-channel batch norm"):
        fuse_linear_bn(nn.Linear(5, 4), nn.BatchNorm1d(3))


# ---- scale invariance (seed 002) -------------------------------------------------------------


def test_batch_norm_is_invariant_to_the_scale_of_the_weights(rng):
    """BN(W u) = BN((a W) u), and ∂L/∂(aW) = ∂L/∂W / a."""
    a = 7.5
    u = tn.tensor(rng.standard_normal((16, 6)))
    dy = tn.tensor(rng.standard_normal((16, 4)))
    outputs, grads = [], []
    for scale in (1, a):
        lin, bn = nn.Linear(6, 4, bias=False).double(), nn.BatchNorm1d(4, eps=0).double()
        lin.weight.data[...] = scale * np.linspace(-1, 1, 24).reshape(4, 6)
        y = bn(lin(u))
        y.backward(dy)
        outputs.append(y.numpy())
        grads.append(lin.weight.grad.numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[1], grads[0] / a, rtol=1e-10, atol=1e-12)
    assert np.abs(grads[0]).max() > 1e-3


# ---- clear errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.BatchNorm1d(3), (1, 3)),
        (nn.BatchNorm2d(3), (1, 3, 1, 1)),
        (nn.BatchRenorm1d(3), (1, 3)),
        (nn.MeanOnlyBatchNorm1d(3), (1, 3)),
        (nn.BatchInstanceNorm2d(3), (1, 3, 1, 1)),
        (nn.SwitchableNorm2d(3), (1, 3, 1, 1)),
        (nn.BatchLayerNorm(3), (1, 3)),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_one_value_per_channel_in_training_is_an_error(layer, shape):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.train()(tn.zeros(*shape))
    assert layer.eval()(tn.zeros(*shape)).shape == shape  # fine with running estimates


def test_group_norm_groups_must_divide_channels():
    with pytest.raises(ValueError, match="num_groups 3 must divide num_channels 4"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="num_groups 3 must divide the 4 channels"):
        F.group_norm(tn.zeros(2, 4, 3), 3)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        (nn.BatchNorm2d(3), r"expected 3 channels"),
        (nn.BatchRenorm2d(3), r"expected 3 channels"),
        (nn.InstanceNorm2d(3), r"expected 3 channels"),
        (nn.MeanOnlyBatchNorm2d(3), r"expected 3 channels"),
        (nn.BatchInstanceNorm2d(3), r"expected 3 channels"),
        (nn.SwitchableNorm2d(3), r"expected 3 channels"),
        (nn.BatchLayerNorm(3), r"expected 3 channels"),
        (nn.GroupNorm(1, 3), r"expected input \(N, 3, \.\.\.\)"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_wrong_channel_count_is_an_error(layer, match):
    with pytest.raises(ValueError, match=match):
        layer(tn.zeros(2, 4, 3, 3))


def test_functional_channel_mismatch_is_an_error():
    with pytest.raises(ValueError, match="batch_norm: expected 3 channels"):
        F.batch_norm(tn.zeros(2, 4), None, None, tn.ones(3), tn.zeros(3), training=True)


@pytest.mark.parametrize(
    ("layer", "shape", "match"),
    [
        (nn.BatchNorm2d(3), (2, 3, 4), "expected 4D input, got 3D"),
        (nn.BatchNorm1d(3), (2, 3, 4, 4), "expected 2D or 3D input, got 4D"),
        (nn.InstanceNorm2d(3), (2, 3, 4), "expected 4D input, got 3D"),
        (nn.InstanceNorm1d(3), (2, 3), "expected 3D input, got 2D"),
        (nn.BatchRenorm2d(3), (2, 3), "expected 4D input, got 2D"),
        (nn.SwitchableNorm2d(3), (2, 3, 4), "expected 4D input, got 3D"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_wrong_rank_is_an_error(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer(tn.zeros(*shape))


def test_layer_norm_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"does not end with normalized_shape \(4, 5\)"):
        nn.LayerNorm((4, 5))(tn.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="does not end with normalized_shape"):
        nn.LayerNorm(8)(tn.zeros(2, 4))


# ---- state_dict ------------------------------------------------------------------------------

BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


@pytest.mark.parametrize(
    ("layer", "keys"),
    [
        (nn.BatchNorm2d(3), BN_KEYS),
        (nn.BatchNorm2d(3, momentum=None), BN_KEYS),
        (nn.BatchNorm2d(3, affine=False), BN_KEYS[2:]),
        (nn.InstanceNorm2d(3, track_running_stats=True), BN_KEYS[2:]),
        (nn.InstanceNorm2d(3, affine=True, track_running_stats=True), BN_KEYS),
        (nn.GroupNorm(1, 3), ["weight", "bias"]),
        (nn.LayerNorm((3, 2)), ["weight", "bias"]),
    ],
    ids=["BN2d", "BN2d-cumulative", "BN2d-plain", "IN2d", "IN2d-affine", "GN", "LN"],
)
def test_state_dict_keys_are_pytorchs(layer, keys):
    state = layer.state_dict()
    assert list(state) == keys
    if "num_batches_tracked" in state:
        assert state["num_batches_tracked"].dtype == np.int64
        assert state["num_batches_tracked"].shape == ()
        assert state["running_var"].shape == (3,)


def test_double_keeps_num_batches_tracked_int64():
    bn = nn.BatchNorm2d(3, momentum=None).double()
    assert bn.running_mean.dtype == bn.weight.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    bn(tn.randn(2, 3, 2, 2).double())
    bn(tn.randn(2, 3, 2, 2).double())
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.numpy() == 2
    assert bn.float().num_batches_tracked.dtype == np.int64


def test_state_dict_round_trip_restores_eval_output(rng):
    bn = nn.BatchNorm2d(3, momentum=None)
    for x in batches(rng, (2, 3, 2, 2)):
        bn(tn.tensor(x))
    copy = nn.BatchNorm2d(3, momentum=None)
    copy.load_state_dict(bn.state_dict())
    x = tn.tensor(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    np.testing.assert_array_equal(copy.eval()(x).numpy(), bn.eval()(x).numpy())
    assert copy.num_batches_tracked.numpy() == 4


# ---- learned mixing weights ------------------------------------------------------------------


def test_batch_instance_norm_clips_rho_to_the_unit_interval(rng):
    bin_ = nn.BatchInstanceNorm2d(3)
    np.testing.assert_array_equal(bin_.rho.numpy(), 1)
    bin_.rho.data[...] = [-0.5, 0.3, 1.7]
    x = tn.tensor(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    y = bin_(x)
    close(bin_.rho.numpy(), [0, 0.3, 1])
    (y * tn.tensor(rng.standard_normal(y.shape).astype(np.float32))).sum().backward()
    assert np.all(bin_.rho.grad.numpy() != 0)  # ρ learns


def test_switchable_norm_mixing_weights_get_gradients(rng):
    sn = nn.SwitchableNorm2d(3)
    x = tn.tensor(rng.standard_normal((2, 3, 2, 2)).astype(np.float32) * 3 + 1)
    y = sn(x)
    (y * tn.tensor(rng.standard_normal(y.shape).astype(np.float32))).sum().backward()
    for p in (sn.mean_weight, sn.var_weight):
        assert p.grad is not None and p.grad.shape == (3,)
        assert np.abs(p.grad.numpy()).max() > 1e-4
        close(p.grad.numpy().sum(), 0, atol=1e-5)  # softmax logits: gradients sum to zero


def test_fusion_folds_the_current_weight_of_a_weight_normed_layer():
    from tinynorm.nn.utils import fuse_linear_bn, weight_norm

    tn.manual_seed(0)
    lin, bn = weight_norm(nn.Linear(4, 3)), nn.BatchNorm1d(3)
    x = tn.randn(8, 4)
    bn(lin(x))
    lin.weight_g.data *= 2  # changed after the last forward: the cached weight is stale
    bn.eval()
    np.testing.assert_allclose(fuse_linear_bn(lin, bn)(x).numpy(), bn(lin(x)).numpy(), atol=1e-5)


def test_batch_instance_norm_keeps_rho_in_range_in_eval_too():
    layer = nn.BatchInstanceNorm2d(2).eval()
    layer.rho.data[...] = [1.7, -0.5]
    layer(tn.randn(2, 2, 3, 3))
    assert layer.rho.numpy().tolist() == [1.0, 0.0]


def test_functional_norms_without_running_estimates_say_so():
    x = tn.randn(2, 3, 4)
    with pytest.raises(ValueError, match="instance_norm without batch statistics needs"):
        F.instance_norm(x, use_input_stats=False)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.batch_norm(x, None, None, tn.ones(3), tn.zeros(3, 1), training=True)
