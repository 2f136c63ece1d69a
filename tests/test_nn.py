"""tinynorm.nn: Module bookkeeping, state_dict, dtype/device moves, initialization, layers."""

from __future__ import annotations

import importlib.util
import math
from collections import OrderedDict

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.nn import init


class Block(nn.Module):
    """Linear -> ReLU -> Linear(no bias), with a persistent and a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.register_buffer("running", tn.zeros(4))
        self.register_buffer("scratch", tn.zeros(2), persistent=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


def make_net(seed: int = 0) -> nn.Sequential:
    tn.manual_seed(seed)
    return nn.Sequential(Block(), nn.Linear(2, 5))


def mlp(seed: int = 0) -> nn.Sequential:
    tn.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


# ---- registration ---------------------------------------------------------------------------
def test_named_parameters_are_dotted_and_in_registration_order():
    net = make_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["0.fc.weight", "0.fc.bias", "0.head.weight", "1.weight", "1.bias"]
    params = list(net.parameters())
    assert [p.shape for p in params] == [(4, 3), (4,), (2, 4), (5, 2), (5,)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert params[0] is net[0].fc.weight


def test_shared_parameter_is_listed_once():
    lin = nn.Linear(2, 2)
    net = nn.Sequential(lin, nn.ReLU(), lin)
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]


def test_buffers_persistent_and_not():
    net = make_net()
    assert [n for n, _ in net.named_buffers()] == ["0.running", "0.scratch"]
    assert all(not b.requires_grad for b in net.buffers())
    assert "0.scratch" not in net.state_dict()
    assert "0.running" in net.state_dict()


def test_reregistering_a_buffer_as_persistent_saves_it():
    block = Block()
    block.register_buffer("scratch", tn.ones(2), persistent=True)
    assert "scratch" in block.state_dict()


def test_children_and_modules():
    net = make_net()
    block, last = net[0], net[1]
    assert list(net.children()) == [block, last]
    assert [n for n, _ in net.named_children()] == ["0", "1"]
    assert [n for n, _ in net.named_modules()] == ["", "0", "0.fc", "0.act", "0.head", "1"]
    assert list(net.modules()) == [net, block, block.fc, block.act, block.head, last]
    assert len(net) == 2


def test_module_list_registers_its_items():
    layers = nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 1)])
    layers.append(nn.Linear(1, 1, bias=False))
    assert len(layers) == 3
    assert [n for n, _ in layers.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "2.weight",
    ]


def test_sequential_from_ordered_dict_uses_the_names():
    net = nn.Sequential(OrderedDict([("hidden", nn.Linear(2, 3)), ("act", nn.ReLU())]))
    assert [n for n, _ in net.named_parameters()] == ["hidden.weight", "hidden.bias"]
    assert net.hidden is net[0]


def test_assigning_a_tensor_to_a_buffer_name_updates_the_buffer():
    block = Block()
    new = tn.ones(4)
    block.running = new
    assert block.running is new
    assert dict(block.named_buffers())["running"] is new
    np.testing.assert_array_equal(block.state_dict()["running"].numpy(), np.ones(4))


def test_assigning_a_non_tensor_to_a_buffer_raises():
    block = Block()
    with pytest.raises(TypeError, match="running"):
        block.running = np.ones(4)


def test_assigning_a_plain_tensor_to_a_parameter_raises():
    lin = nn.Linear(3, 4)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = tn.zeros(4, 3)
    assert isinstance(lin.weight, nn.Parameter)


def test_assigning_a_non_module_to_a_child_name_raises():
    block = Block()
    with pytest.raises(TypeError, match="fc"):
        block.fc = tn.zeros(2)
    assert isinstance(block.fc, nn.Linear)


def test_assigning_parameter_and_none():
    lin = nn.Linear(3, 4)
    new = nn.Parameter(np.zeros((4, 3), np.float32))
    lin.weight = new
    assert lin.weight is new
    assert next(iter(lin.parameters())) is new
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(lin(tn.ones(2, 3)).numpy(), np.zeros((2, 4)))


def test_plain_attributes_are_not_registered():
    block = Block()
    block.note = tn.ones(3)  # a plain Tensor under a new name is just an attribute
    assert "note" not in dict(block.named_buffers())
    assert "note" not in block.state_dict()
    assert block.note.shape == (3,)


def test_train_and_eval_propagate_to_all_submodules():
    net = make_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not net[0].fc.training


def test_zero_grad_sets_grads_to_none():
    net = make_net()
    net(tn.randn(5, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_forward_hook_sees_module_inputs_and_output():
    lin = nn.Linear(3, 2)
    calls = []
    lin.register_forward_hook(lambda m, inputs, out: calls.append((m, inputs, out)))
    x = tn.randn(4, 3)
    y = lin(x)
    assert len(calls) == 1
    module, inputs, out = calls[0]
    assert module is lin
    assert isinstance(inputs, tuple) and inputs[0] is x
    assert out is y


def test_forward_hook_return_value_replaces_output_and_remover_works():
    lin = nn.Linear(3, 2)
    x = tn.randn(4, 3)
    expected = lin(x).numpy()
    handle = lin.register_forward_hook(lambda m, inputs, out: out * 2)
    np.testing.assert_allclose(lin(x).numpy(), 2 * expected, rtol=1e-6)
    handle.remove()
    np.testing.assert_allclose(lin(x).numpy(), expected, rtol=1e-6)


def test_hook_on_a_child_runs_inside_the_parent():
    net = make_net()
    seen = []
    net[0].act.register_forward_hook(lambda m, inputs, out: seen.append(out.shape))
    net(tn.randn(7, 3))
    assert seen == [(7, 4)]


def test_sequential_repr():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(0.25))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Dropout(p=0.25)\n"
        ")"
    )


def test_nested_repr_indents_grandchildren():
    net = nn.Sequential(nn.Sequential(nn.Tanh()))
    assert repr(net) == "Sequential(\n  (0): Sequential(\n    (0): Tanh()\n  )\n)"


# ---- state_dict -----------------------------------------------------------------------------
def test_state_dict_keys_are_parameters_and_persistent_buffers():
    sd = make_net().state_dict()
    assert list(sd) == [
        "0.running",
        "0.fc.weight",
        "0.fc.bias",
        "0.head.weight",
        "1.weight",
        "1.bias",
    ]
    assert all(isinstance(v, tn.Tensor) and not v.requires_grad for v in sd.values())


def test_state_dict_round_trip_gives_identical_outputs():
    src, dst = make_net(1), make_net(2)
    src[0].running = tn.randn(4)
    x = tn.randn(6, 3)
    assert not np.allclose(src(x).numpy(), dst(x).numpy())
    dst.load_state_dict(src.state_dict())
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())
    np.testing.assert_array_equal(dst[0].running.numpy(), src[0].running.numpy())


def test_load_state_dict_copies_values():
    src, dst = make_net(1), make_net(2)
    dst.load_state_dict(src.state_dict())
    before = dst[1].weight.numpy().copy()
    src[1].weight.data[...] = 0  # changing the source afterwards must not reach dst
    np.testing.assert_array_equal(dst[1].weight.numpy(), before)


@pytest.mark.parametrize("as_numpy", [True, False])
def test_load_state_dict_from_float64_keeps_module_dtype(as_numpy):
    src, dst = make_net(1), make_net(2)
    wide = {
        k: v.numpy().astype(np.float64) if as_numpy else v.double()
        for k, v in src.state_dict().items()
    }
    dst.load_state_dict(wide)
    for name, p in dst.named_parameters():
        assert p.dtype == np.float32, name
        assert isinstance(p, nn.Parameter)
    for (name, a), b in zip(src.named_parameters(), dst.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_load_state_dict_strict_reports_missing_and_unexpected_keys():
    net = make_net()
    sd = net.state_dict()
    del sd["1.bias"]
    sd["1.extra"] = tn.zeros(3)
    before = net[0].fc.weight.numpy().copy()
    with pytest.raises(KeyError) as info:
        net.load_state_dict({k: v.numpy() * 0 for k, v in sd.items()})
    message = str(info.value)
    assert "1.bias" in message and "1.extra" in message
    assert "missing" in message and "unexpected" in message
    np.testing.assert_array_equal(net[0].fc.weight.numpy(), before)  # nothing loaded


def test_load_state_dict_non_strict_loads_the_matching_keys():
    src, dst = make_net(1), make_net(2)
    sd = src.state_dict()
    del sd["1.bias"]
    sd["not.a.key"] = tn.zeros(1)
    kept_bias = dst[1].bias.numpy().copy()
    dst.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(dst[1].weight.numpy(), src[1].weight.numpy())
    np.testing.assert_array_equal(dst[0].fc.weight.numpy(), src[0].fc.weight.numpy())
    np.testing.assert_array_equal(dst[1].bias.numpy(), kept_bias)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_shape_mismatch_names_key_and_shapes(strict):
    net = make_net()
    sd = net.state_dict()
    sd["1.weight"] = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd, strict=strict)
    message = str(info.value)
    assert "1.weight" in message and "(5, 3)" in message and "(5, 2)" in message


def test_a_rejected_state_dict_changes_nothing():
    net = make_net()
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    sd = {k: v.numpy() + 1 for k, v in net.state_dict().items()}
    sd["1.weight"] = np.zeros((5, 3), np.float32)  # checked after "0.weight" and "0.bias"
    with pytest.raises(ValueError):
        net.load_state_dict(sd)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])


# ---- dtype and device -----------------------------------------------------------------------
class WithIntBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)
        self.register_buffer("mean", tn.zeros(3))
        self.register_buffer("count", tn.tensor(7))

    def forward(self, x):
        return self.fc(x) - self.mean


def test_double_and_float_convert_floats_keep_ints_and_identity():
    m = WithIntBuffer()
    params = list(m.parameters())
    values = [p.numpy().copy() for p in params]
    m(tn.randn(4, 2)).sum().backward()
    assert m.double() is m
    assert list(m.parameters()) == params and all(a is b for a, b in zip(m.parameters(), params))
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert all(p.grad.dtype == np.float64 for p in m.parameters())
    assert m.mean.dtype == np.float64
    assert m.count.dtype == np.int64 and m.count.item() == 7
    for p, v in zip(params, values):
        np.testing.assert_array_equal(p.numpy(), v)  # float32 -> float64 is exact
    assert m(tn.randn(4, 2).double()).dtype == np.float64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    assert m.mean.dtype == np.float32 and m.count.dtype == np.int64
    assert all(a is b for a, b in zip(m.parameters(), params))


def test_double_module_trains_with_float64_gradients():
    m = mlp().double()
    x = tn.randn(5, 3).double()
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == np.float64 for p in m.parameters())


def test_to_cpu_is_a_no_op():
    m = WithIntBuffer()
    arrays = [t.data for t in (*m.parameters(), *m.buffers())]
    assert m.to("cpu") is m
    assert m.cpu() is m
    assert all(t.data is a for t, a in zip((*m.parameters(), *m.buffers()), arrays))


def test_to_unknown_device_raises():
    with pytest.raises(ValueError, match="tpu"):
        nn.Linear(2, 2).to("tpu")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_to_cuda_without_cupy_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="CuPy"):
        nn.Linear(2, 2).to("cuda")


# ---- initialization -------------------------------------------------------------------------
def _assert_uniform(values: np.ndarray, bound: float, tol: float = 0.05) -> None:
    """All within ±bound, reaching close to it, with the std of U(-bound, bound)."""
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.9 * bound
    assert values.std() == pytest.approx(bound / math.sqrt(3), rel=tol)
    assert abs(values.mean()) < 0.05 * bound


def test_linear_default_init_is_uniform_within_inverse_sqrt_fan_in():
    tn.manual_seed(0)
    lin = nn.Linear(1000, 400)
    bound = 1 / math.sqrt(1000)
    assert lin.weight.dtype == np.float32 and lin.weight.shape == (400, 1000)
    _assert_uniform(lin.weight.numpy(), bound)
    _assert_uniform(lin.bias.numpy(), bound, tol=0.15)


def test_conv2d_default_init_is_uniform_within_inverse_sqrt_fan_in():
    tn.manual_seed(0)
    conv = nn.Conv2d(64, 32, 3)
    bound = 1 / math.sqrt(64 * 3 * 3)
    assert conv.weight.shape == (32, 64, 3, 3) and conv.bias.shape == (32,)
    _assert_uniform(conv.weight.numpy(), bound)
    bias = conv.bias.numpy()
    assert np.abs(bias).max() <= bound and bias.std() > 0.3 * bound


def test_kaiming_normal_std_follows_fan_and_gain():
    w = tn.zeros(400, 300)
    init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 300), rel=0.03)
    assert abs(w.numpy().mean()) < 0.01
    init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
    assert w.numpy().std() == pytest.approx(math.sqrt(2 / 400), rel=0.03)
    conv_w = tn.zeros(64, 32, 3, 3)
    init.kaiming_normal_(conv_w)  # defaults: a=0, fan_in, leaky_relu -> gain sqrt(2)
    assert conv_w.numpy().std() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)


def test_kaiming_uniform_bound():
    w = tn.zeros(300, 500)
    init.kaiming_uniform_(w, nonlinearity="relu")
    _assert_uniform(w.numpy(), math.sqrt(2) * math.sqrt(3 / 500))


def test_xavier_uniform_bound_and_std():
    w = tn.zeros(300, 500)
    init.xavier_uniform_(w, gain=2.0)
    _assert_uniform(w.numpy(), 2.0 * math.sqrt(6 / (300 + 500)))


def test_xavier_normal_std():
    w = tn.zeros(300, 500)
    init.xavier_normal_(w, gain=init.calculate_gain("tanh"))
    expected = 5 / 3 * math.sqrt(2 / (300 + 500))
    assert w.numpy().std() == pytest.approx(expected, rel=0.03)


def test_normal_and_constant_fillers():
    w = tn.zeros(200, 300)
    init.normal_(w, mean=2.0, std=0.5)
    assert w.numpy().mean() == pytest.approx(2.0, abs=0.01)
    assert w.numpy().std() == pytest.approx(0.5, rel=0.03)
    assert w.dtype == np.float32
    init.constant_(w, 0.25)
    np.testing.assert_array_equal(w.numpy(), np.full((200, 300), 0.25, np.float32))
    init.ones_(w)
    assert (w.numpy() == 1).all()
    init.zeros_(w)
    assert (w.numpy() == 0).all()


def test_initializers_fill_in_place_and_return_the_tensor():
    p = nn.Parameter(np.zeros((3, 4), np.float64))
    array = p.data
    assert init.uniform_(p, -1, 1) is p
    assert p.data is array and p.dtype == np.float64
    assert (np.abs(p.numpy()) <= 1).all() and p.numpy().std() > 0


def test_fan_needs_two_dims():
    with pytest.raises(ValueError):
        init.xavier_uniform_(tn.zeros(5))


def test_manual_seed_makes_init_repeatable():
    def weights(seed):
        tn.manual_seed(seed)
        return nn.Linear(8, 6).weight.numpy().copy(), nn.Conv2d(2, 3, 3).weight.numpy().copy()

    first, again, other = weights(5), weights(5), weights(6)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


@pytest.mark.parametrize(
    ("nonlinearity", "param", "gain"),
    [
        ("linear", None, 1.0),
        ("conv2d", None, 1.0),
        ("sigmoid", None, 1.0),
        ("tanh", None, 5 / 3),
        ("relu", None, math.sqrt(2)),
        ("leaky_relu", None, math.sqrt(2 / (1 + 0.01**2))),
        ("leaky_relu", 0.2, math.sqrt(2 / (1 + 0.2**2))),
        ("leaky_relu", math.sqrt(5), math.sqrt(1 / 3)),
        ("selu", None, 0.75),
    ],
)
def test_calculate_gain(nonlinearity, param, gain):
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(gain)


def test_calculate_gain_rejects_unknown():
    with pytest.raises(ValueError, match="swish"):
        init.calculate_gain("swish")


# ---- layers ---------------------------------------------------------------------------------
def test_linear_forward_matches_numpy(rng):
    lin = nn.Linear(5, 3)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    y = lin(tn.tensor(x))
    assert y.shape == (2, 4, 3) and y.dtype == np.float32
    expected = x @ lin.weight.numpy().T + lin.bias.numpy()
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        F.linear(tn.tensor(x), lin.weight, lin.bias).numpy(), expected, rtol=1e-5, atol=1e-6
    )


def test_linear_without_bias(rng):
    lin = nn.Linear(4, 2, bias=False)
    assert lin.bias is None
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(lin(tn.tensor(x)).numpy(), x @ lin.weight.numpy().T, rtol=1e-5)


def _conv2d_reference(x, w, b, stride, padding):
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    return y


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (2, 1), (1, 2)])
def test_conv2d_forward_matches_numpy(rng, stride, padding):
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding)
    assert conv.stride == (stride, stride) and conv.padding == (padding, padding)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = conv(tn.tensor(x))
    expected = _conv2d_reference(x, conv.weight.numpy(), conv.bias.numpy(), stride, padding)
    assert y.shape == expected.shape
    assert y.shape[2] == (7 + 2 * padding - 3) // stride + 1
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_conv2d_rectangular_kernel_without_bias(rng):
    conv = nn.Conv2d(2, 5, (3, 1), bias=False)
    assert conv.bias is None and conv.weight.shape == (5, 2, 3, 1)
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    y = conv(tn.tensor(x))
    assert y.shape == (1, 5, 3, 4)
    assert [n for n, _ in conv.named_parameters()] == ["weight"]


@pytest.mark.parametrize(
    ("layer", "reference"),
    [
        (nn.ReLU(), lambda x: np.maximum(x, 0)),
        (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (nn.Tanh(), np.tanh),
    ],
)
def test_activations_match_numpy(rng, layer, reference):
    x = rng.standard_normal((4, 5)).astype(np.float32) * 3
    y = layer(tn.tensor(x))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), reference(x), rtol=1e-5, atol=1e-6)


def test_softmax_layers_match_numpy(rng):
    x = rng.standard_normal((3, 4))
    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(nn.Softmax(dim=1)(tn.tensor(x)).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(
        nn.LogSoftmax(dim=1)(tn.tensor(x)).numpy(), np.log(expected), rtol=1e-10
    )


def test_flatten(rng):
    x = tn.tensor(rng.standard_normal((2, 3, 4, 5)).astype(np.float32))
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(2)(x).shape == (2, 3, 20)
    assert nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    np.testing.assert_array_equal(nn.Flatten()(x).numpy(), x.numpy().reshape(2, 60))


def _pool_reference(x, k, s, p, reduce):
    pad_value = -np.inf if reduce is np.max else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value)
    oh, ow = (x.shape[2] + 2 * p - k) // s + 1, (x.shape[3] + 2 * p - k) // s + 1
    y = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = reduce(xp[:, :, i * s : i * s + k, j * s : j * s + k], axis=(2, 3))
    return y


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_max_pool_matches_numpy(rng, kernel, stride, padding):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    y = nn.MaxPool2d(kernel, stride, padding)(tn.tensor(x))
    expected = _pool_reference(x, kernel, stride or kernel, padding, np.max)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_avg_pool_matches_numpy(rng, kernel, stride, padding):
    """Zero padding counts in the average (PyTorch's count_include_pad=True)."""
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    y = nn.AvgPool2d(kernel, stride, padding)(tn.tensor(x))
    expected = _pool_reference(x, kernel, stride or kernel, padding, np.mean)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pool_default_stride_is_kernel_size():
    x = tn.randn(1, 1, 8, 8)
    assert nn.MaxPool2d(2)(x).shape == (1, 1, 4, 4)
    assert nn.AvgPool2d(4)(x).shape == (1, 1, 2, 2)


def test_functional_forms_match_the_layers(rng):
    x = tn.tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
    np.testing.assert_array_equal(
        F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1).numpy(), conv(x).numpy()
    )
    np.testing.assert_array_equal(F.max_pool2d(x, 2).numpy(), nn.MaxPool2d(2)(x).numpy())
    np.testing.assert_array_equal(
        F.avg_pool2d(x, 3, 1, 1).numpy(), nn.AvgPool2d(3, 1, 1)(x).numpy()
    )
    np.testing.assert_array_equal(F.relu(x).numpy(), nn.ReLU()(x).numpy())


def test_dropout_in_eval_is_identity():
    drop = nn.Dropout(0.5).eval()
    x = tn.randn(10, 10)
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).numpy(), x.numpy())


def test_dropout_in_training_zeroes_about_p_and_scales_the_rest():
    p = 0.3
    tn.manual_seed(0)
    x = tn.ones(200, 500)
    y = nn.Dropout(p)(x).numpy()
    zero = y == 0
    assert zero.mean() == pytest.approx(p, abs=0.01)
    np.testing.assert_allclose(y[~zero], 1 / (1 - p), rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=0.02)  # expectation preserved


def test_dropout_gradient_uses_the_same_mask():
    tn.manual_seed(1)
    x = tn.ones(50, 40, requires_grad=True)
    y = nn.Dropout(0.5)(x)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.numpy())


def test_dropout_extremes_and_bad_p():
    x = tn.randn(4, 5)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(nn.Dropout(1.0)(x).numpy(), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        F.dropout(x, -0.1)


def test_dropout_mask_is_repeatable_with_manual_seed():
    x = tn.ones(20, 20)
    tn.manual_seed(3)
    a = nn.Dropout(0.5)(x).numpy()
    tn.manual_seed(3)
    b = nn.Dropout(0.5)(x).numpy()
    tn.manual_seed(4)
    c = nn.Dropout(0.5)(x).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_gradcheck_float64(rng):
    x = tn.tensor(rng.standard_normal((4, 6)), requires_grad=True)
    drop = nn.Dropout(0.4)

    def fn(t):
        tn.manual_seed(7)  # the same mask on every call
        return drop(t) * t

    assert tn.gradcheck(fn, [x])


def _double_mlp():
    tn.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 2)
    ).double()


def test_mlp_gradcheck_wrt_input(rng):
    model = _double_mlp()
    x = tn.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    assert tn.gradcheck(model, [x])


def test_mlp_gradcheck_wrt_parameters(rng):
    model = _double_mlp()
    x = tn.tensor(rng.standard_normal((4, 3)))
    params = list(model.parameters())
    assert all(p.dtype == np.float64 and p.requires_grad for p in params)
    assert tn.gradcheck(lambda *_: model(x), params)


def test_gradcheck_of_mlp_catches_a_wrong_gradient(rng):
    """The check above can fail: a hook that changes the output outside autograd breaks it."""
    model = _double_mlp()
    x = tn.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    # y + y.detach()**2 has the value of a function whose gradient autograd does not see
    model.register_forward_hook(lambda m, i, out: out + out.detach() * out.detach())
    with pytest.raises(tn.GradcheckError):
        tn.gradcheck(model, [x])


def test_small_cnn_gradcheck_wrt_input_and_parameters(rng):
    tn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 3),
    ).double()
    x = tn.tensor(rng.standard_normal((2, 1, 4, 4)), requires_grad=True)
    assert tn.gradcheck(model, [x])
    x.requires_grad = False
    assert tn.gradcheck(lambda *_: model(x), list(model.parameters()))


def test_load_state_dict_reports_what_it_did_not_match():
    net = make_net()
    state = {k: v for k, v in net.state_dict().items() if k != "1.bias"}
    state["extra"] = np.zeros(1)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.bias"] and result.unexpected_keys == ["extra"]
