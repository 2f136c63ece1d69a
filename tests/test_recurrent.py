"""Recurrent layers: float64 gradient checks of the gate ops, every cell and multi-layer,
multi-step sequence modules (initial state included); the outputs against NumPy references of
the equations (plain, layer-normalized and per-step batch-normalized LSTMs, the GRU); PyTorch
parity of outputs, final states and every gradient where torch is installed; per-step
statistics; clear errors."""

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn, ops

# ---- NumPy references of the equations (float64) --------------------------------------------


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def layer_norm(v, weight, bias, eps=1e-5):
    mean, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * weight + (0 if bias is None else bias)


def batch_norm(v, weight, bias, eps=1e-5):
    mean, var = v.mean(0), v.var(0)
    return (v - mean) / np.sqrt(var + eps) * weight + (0 if bias is None else bias)


def lstm_update(gates, c, norm_c=lambda c: c):
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(norm_c(c)), c


def gru_update(gi, gh, h):
    (ir, iz, i_n), (hr, hz, hn) = np.split(gi, 3, axis=-1), np.split(gh, 3, axis=-1)
    r, z = sigmoid(ir + hr), sigmoid(iz + hz)
    n = np.tanh(i_n + r * hn)
    return (1 - z) * n + z * h


def params(module):
    return {k: v.numpy() for k, v in module.state_dict().items()}


def reference_rnn_base(module, x, h0, c0=None):
    """PyTorch's equations for RNN/LSTM/GRU, time-major x (T, N, in)."""
    p = params(module)
    finals_h, finals_c = [], []
    for k in range(module.num_layers):
        w_ih, w_hh = p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
        b_ih, b_hh = p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]
        h, c, outs = h0[k], None if c0 is None else c0[k], []
        for xt in x:
            gi, gh = xt @ w_ih.T + b_ih, h @ w_hh.T + b_hh
            if module.mode == "LSTM":
                h, c = lstm_update(gi + gh, c)
            elif module.mode == "GRU":
                h = gru_update(gi, gh, h)
            else:
                h = np.tanh(gi + gh) if module.nonlinearity == "tanh" else np.maximum(gi + gh, 0)
            outs.append(h)
        x = np.stack(outs)
        finals_h.append(h)
        finals_c.append(c)
    return x, np.stack(finals_h), (np.stack(finals_c) if c0 is not None else None)


def randomized(module, rng):
    """`module` in float64 with every parameter (LN gains and biases too) random."""
    module.double()
    for p in module.parameters():
        p.data[...] = 0.6 * rng.standard_normal(p.shape)
    return module


def flat(*tensors):
    return ops.cat([ops.flatten(t) for t in tensors])


# ---- the fused gate ops ---------------------------------------------------------------------


def test_gate_ops_gradcheck(rng):
    gates4 = tn.tensor(rng.standard_normal((3, 8)), requires_grad=True)
    gates3 = tn.tensor(rng.standard_normal((3, 6)), requires_grad=True)
    gates3h = tn.tensor(rng.standard_normal((3, 6)), requires_grad=True)
    c = tn.tensor(rng.standard_normal((3, 2)), requires_grad=True)
    assert tn.gradcheck(ops.lstm_cell_state, [gates4, c])
    assert tn.gradcheck(ops.lstm_hidden, [gates4, c])
    assert tn.gradcheck(ops.gru_cell, [gates3, gates3h, c])


def test_gate_ops_match_the_equations(rng):
    g4, g3, g3h, c = (rng.standard_normal(s) for s in [(4, 12), (4, 9), (4, 9), (4, 3)])
    h_ref, c_ref = lstm_update(g4, c)
    c_new = ops.lstm_cell_state(tn.tensor(g4), tn.tensor(c))
    np.testing.assert_allclose(c_new.numpy(), c_ref, rtol=1e-12)
    np.testing.assert_allclose(ops.lstm_hidden(tn.tensor(g4), c_new).numpy(), h_ref, rtol=1e-12)
    h = ops.gru_cell(tn.tensor(g3), tn.tensor(g3h), tn.tensor(c))
    np.testing.assert_allclose(h.numpy(), gru_update(g3, g3h, c), rtol=1e-12)


def test_gate_ops_check_their_shapes():
    with pytest.raises(ValueError, match=r"gates of shape \(2, 7\) do not match a state"):
        ops.lstm_cell_state(tn.zeros(2, 7), tn.zeros(2, 2))
    with pytest.raises(ValueError, match="gru_cell"):
        ops.gru_cell(tn.zeros(2, 6), tn.zeros(2, 6), tn.zeros(3, 2))


def test_stack(rng):
    a, b = (tn.tensor(rng.standard_normal((2, 3)), requires_grad=True) for _ in range(2))
    np.testing.assert_array_equal(ops.stack([a, b], 1).numpy(), np.stack([a.numpy(), b.numpy()], 1))
    assert tn.gradcheck(lambda a, b: ops.stack([a, b], -1), [a, b])
    with pytest.raises(ValueError, match="differ"):
        ops.stack([a, tn.zeros(3, 2)])


# ---- cells ----------------------------------------------------------------------------------

CELLS = {
    "RNNCell-tanh": lambda: nn.RNNCell(3, 2),
    "RNNCell-relu": lambda: nn.RNNCell(3, 2, nonlinearity="relu"),
    "LSTMCell": lambda: nn.LSTMCell(3, 2),
    "GRUCell": lambda: nn.GRUCell(3, 2),
    "LSTMCell-no-bias": lambda: nn.LSTMCell(3, 2, bias=False),
    "LayerNormLSTMCell": lambda: nn.LayerNormLSTMCell(3, 2),
    "LayerNormGRUCell": lambda: nn.LayerNormGRUCell(3, 2),
    "BatchNormLSTMCell": lambda: nn.BatchNormLSTMCell(3, 2, max_steps=2),
    "BatchLayerNormLSTMCell": lambda: nn.BatchLayerNormLSTMCell(3, 2, max_steps=2),
}


def snapshot(module):
    saved = [(b, b.data.copy()) for b in module.buffers()]

    def restore():
        for b, data in saved:
            b.data[...] = data

    return restore


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_cell_gradcheck(rng, name, training):
    cell = randomized(CELLS[name](), rng)
    x = tn.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    state = [tn.tensor(rng.standard_normal((4, 2)), requires_grad=True) for _ in range(cell.states)]
    for t in range(3):  # running estimates away from their initial values
        hx = tuple(state) if cell.states == 2 else state[0]
        cell(tn.tensor(rng.standard_normal((4, 3))), hx, time_step=t)
    cell.train(training)
    restore = snapshot(cell)

    def f(x, *args):
        restore()
        hx = tuple(args[: cell.states]) if cell.states == 2 else args[0]
        out = cell(x, hx, time_step=1)
        return flat(*out) if cell.states == 2 else out

    assert tn.gradcheck(f, [x, *state, *cell.parameters()])


def test_lstm_cell_matches_torchs_equations(rng):
    cell = randomized(nn.LSTMCell(3, 4), rng)
    x, h, c = (rng.standard_normal(s) for s in [(5, 3), (5, 4), (5, 4)])
    p = params(cell)
    gates = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    h_ref, c_ref = lstm_update(gates, c)
    h_new, c_new = cell(tn.tensor(x), (tn.tensor(h), tn.tensor(c)))
    np.testing.assert_allclose(h_new.numpy(), h_ref, rtol=1e-10)
    np.testing.assert_allclose(c_new.numpy(), c_ref, rtol=1e-10)


def test_cells_unbatched_and_default_state(rng):
    cell = randomized(nn.GRUCell(3, 4), rng)
    x = rng.standard_normal(3)
    one = cell(tn.tensor(x))
    assert one.shape == (4,)
    batched = cell(tn.tensor(x[None]), tn.zeros(1, 4, dtype=np.float64))
    np.testing.assert_allclose(one.numpy(), batched.numpy()[0], rtol=1e-12)


def test_layer_norm_lstm_cell_matches_ba_et_al(rng):
    """§3.1: LN on W_ih x and W_hh h separately and on c', each with its own gain and bias."""
    cell = randomized(nn.LayerNormLSTMCell(3, 4), rng)
    x, h, c = (rng.standard_normal(s) for s in [(5, 3), (5, 4), (5, 4)])
    p = params(cell)
    gates = layer_norm(x @ p["weight_ih"].T, p["ln_ih.weight"], p["ln_ih.bias"]) + layer_norm(
        h @ p["weight_hh"].T, p["ln_hh.weight"], p["ln_hh.bias"]
    )
    h_ref, c_ref = lstm_update(gates, c, lambda c: layer_norm(c, p["ln_c.weight"], p["ln_c.bias"]))
    h_new, c_new = cell(tn.tensor(x), (tn.tensor(h), tn.tensor(c)))
    np.testing.assert_allclose(h_new.numpy(), h_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c_new.numpy(), c_ref, rtol=1e-9, atol=1e-12)
    assert cell.bias_ih is None and cell.bias_hh is None


def test_layer_norm_gru_cell_matches_its_equations(rng):
    cell = randomized(nn.LayerNormGRUCell(3, 4), rng)
    x, h = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    p = params(cell)
    gi = layer_norm(x @ p["weight_ih"].T, p["ln_ih.weight"], p["ln_ih.bias"])
    gh = layer_norm(h @ p["weight_hh"].T, p["ln_hh.weight"], p["ln_hh.bias"])
    np.testing.assert_allclose(
        cell(tn.tensor(x), tn.tensor(h)).numpy(), gru_update(gi, gh, h), rtol=1e-9, atol=1e-12
    )


# ---- sequence modules -----------------------------------------------------------------------

SEQUENCES = {
    "RNN": lambda bf: nn.RNN(3, 2, num_layers=2, batch_first=bf),
    "RNN-relu": lambda bf: nn.RNN(3, 2, nonlinearity="relu", batch_first=bf),
    "LSTM": lambda bf: nn.LSTM(3, 2, num_layers=2, batch_first=bf),
    "GRU": lambda bf: nn.GRU(3, 2, num_layers=2, batch_first=bf),
    "LayerNormLSTM": lambda bf: nn.LayerNormLSTM(3, 2, num_layers=2, batch_first=bf),
    "LayerNormGRU": lambda bf: nn.LayerNormGRU(3, 2, batch_first=bf),
    "BatchNormLSTM": lambda bf: nn.BatchNormLSTM(3, 2, 2, batch_first=bf, max_steps=2),
    "BatchLayerNormLSTM": lambda bf: nn.BatchLayerNormLSTM(3, 2, batch_first=bf, max_steps=4),
}


@pytest.mark.parametrize("name", SEQUENCES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_sequence_gradcheck(rng, name, batch_first):
    """Backpropagation through 3 steps and the layers, to the input, h0 (and c0) and every
    parameter; the BN variants in training, where step 2 reuses step 1's row of statistics."""
    module = randomized(SEQUENCES[name](batch_first), rng)
    T, N = 3, 4
    x = tn.tensor(rng.standard_normal((N, T, 3) if batch_first else (T, N, 3)), requires_grad=True)
    state = [
        tn.tensor(rng.standard_normal((module.num_layers, N, 2)), requires_grad=True)
        for _ in range(module.states)
    ]
    restore = snapshot(module)

    def f(x, *args):
        restore()
        hx = tuple(args[: module.states]) if module.states == 2 else args[0]
        output, final = module(x, hx)
        return flat(output, *(final if module.states == 2 else (final,)))

    assert tn.gradcheck(f, [x, *state, *module.parameters()])


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequences_match_the_equations(rng, mode, batch_first):
    module = randomized(getattr(nn, mode)(3, 4, num_layers=2, batch_first=batch_first), rng)
    x = rng.standard_normal((5, 2, 3))  # time-major
    h0, c0 = rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 2, 4))
    out_ref, h_ref, c_ref = reference_rnn_base(module, x, h0, c0 if mode == "LSTM" else None)
    given = x.transpose(1, 0, 2) if batch_first else x
    hx = (tn.tensor(h0), tn.tensor(c0)) if mode == "LSTM" else tn.tensor(h0)
    out, final = module(tn.tensor(given), hx)
    expected = out_ref.transpose(1, 0, 2) if batch_first else out_ref
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    h_n = final[0] if mode == "LSTM" else final
    np.testing.assert_allclose(h_n.numpy(), h_ref, rtol=1e-10, atol=1e-12)
    if mode == "LSTM":
        np.testing.assert_allclose(final[1].numpy(), c_ref, rtol=1e-10, atol=1e-12)


def test_parameter_names_shapes_and_initialization():
    lstm = nn.LSTM(3, 5, num_layers=2)
    shapes = {k: tuple(v.shape) for k, v in lstm.state_dict().items()}
    assert shapes == {
        "weight_ih_l0": (20, 3),
        "weight_hh_l0": (20, 5),
        "bias_ih_l0": (20,),
        "bias_hh_l0": (20,),
        "weight_ih_l1": (20, 5),
        "weight_hh_l1": (20, 5),
        "bias_ih_l1": (20,),
        "bias_hh_l1": (20,),
    }
    values = np.concatenate([p.numpy().ravel() for p in lstm.parameters()])
    bound = 1 / np.sqrt(5)
    assert np.abs(values).max() <= bound and values.std() > bound / 3  # U(±1/√H)
    assert [k for k in nn.GRU(3, 5, bias=False).state_dict()] == ["weight_ih_l0", "weight_hh_l0"]


def test_unbatched_input_and_zero_initial_state(rng):
    lstm = randomized(nn.LSTM(3, 4, num_layers=2), rng)
    x = rng.standard_normal((6, 3))
    out, (h, c) = lstm(tn.tensor(x))
    assert out.shape == (6, 4) and h.shape == c.shape == (2, 4)
    zeros = tn.zeros(2, 1, 4, dtype=np.float64)
    out_b, (h_b, _) = lstm(tn.tensor(x[:, None]), (zeros, zeros))
    np.testing.assert_allclose(out.numpy(), out_b.numpy()[:, 0], rtol=1e-12)
    np.testing.assert_allclose(h.numpy(), h_b.numpy()[:, 0], rtol=1e-12)


def test_dropout_between_layers_only_in_training(rng):
    lstm = randomized(nn.LSTM(3, 4, num_layers=2, dropout=0.5), rng)
    plain = randomized(nn.LSTM(3, 4, num_layers=2), rng)
    plain.load_state_dict(lstm.state_dict())
    x = tn.tensor(rng.standard_normal((5, 8, 3)))
    lstm.eval()
    np.testing.assert_array_equal(lstm(x)[0].numpy(), plain(x)[0].numpy())
    lstm.train()
    assert not np.allclose(lstm(x)[0].numpy(), plain(x)[0].numpy())
    one_layer = randomized(nn.GRU(3, 4, dropout=0.5), rng)
    np.testing.assert_array_equal(one_layer(x)[0].numpy(), one_layer.eval()(x)[0].numpy())


# ---- per-step statistics (Cooijmans et al. 2016) ---------------------------------------------


def test_step_batch_norm_keeps_statistics_per_time_step(rng):
    bn = nn.StepBatchNorm1d(3, max_steps=2, momentum=0.5).double()
    xs = [loc + rng.standard_normal((8, 3)) for loc in (1.0, -4.0, 10.0)]
    for t, x in enumerate(xs):
        y = bn(tn.tensor(x), t)
        np.testing.assert_allclose(y.numpy(), batch_norm(x, 1, 0), rtol=1e-9)
    np.testing.assert_allclose(bn.running_mean.numpy()[0], 0.5 * xs[0].mean(0), rtol=1e-6)
    # steps 1 and 2 share the last row: 0.5·(0.5·μ1) + 0.5·μ2
    last = 0.25 * xs[1].mean(0) + 0.5 * xs[2].mean(0)
    np.testing.assert_allclose(bn.running_mean.numpy()[1], last, rtol=1e-6)
    assert bn.num_batches_tracked.numpy().tolist() == [1, 2]
    bn.eval()
    x = rng.standard_normal((4, 3))
    mean, var = bn.running_mean.numpy()[0], bn.running_var.numpy()[0]
    np.testing.assert_allclose(bn(tn.tensor(x), 0).numpy(), (x - mean) / np.sqrt(var + 1e-5))


def test_step_batch_layer_norm_is_batch_layer_norm_per_step(rng):
    step = nn.StepBatchLayerNorm(4, max_steps=3).double()
    whole = nn.BatchLayerNorm(4).double()
    for t in range(3):
        step(tn.tensor(rng.standard_normal((5, 4)) + t), t)
    step.eval(), whole.eval()
    whole.running_mean.data[...] = step.running_mean.numpy()[2]
    whole.running_var.data[...] = step.running_var.numpy()[2]
    whole.batch_size.data[...] = 5
    x = tn.tensor(rng.standard_normal((3, 4)))
    np.testing.assert_allclose(step(x, 2).numpy(), whole(x).numpy(), rtol=1e-12)


def test_batch_norm_lstm_matches_cooijmans_et_al(rng):
    """Training: BN with the batch statistics of each step on W_ih x and W_hh h (γ = 0.1, no β)
    and on c' (γ = 0.1, β), plus the gate bias; the running estimates of each step move."""
    lstm = nn.BatchNormLSTM(3, 4, max_steps=5).double()
    cell = lstm.layers[0]
    assert np.allclose(cell.norm_ih.weight.numpy(), 0.1) and cell.norm_ih.bias is None
    randomized(lstm, rng)
    p = params(cell)
    x = rng.standard_normal((3, 6, 3))
    h, c = np.zeros((6, 4)), np.zeros((6, 4))
    outs = []
    for xt in x:
        gates = (
            batch_norm(xt @ p["weight_ih"].T, p["norm_ih.weight"], None)
            + batch_norm(h @ p["weight_hh"].T, p["norm_hh.weight"], None)
            + p["bias_ih"]
        )
        h, c = lstm_update(gates, c, lambda c: batch_norm(c, p["norm_c.weight"], p["norm_c.bias"]))
        outs.append(h)
    out, (h_n, c_n) = lstm(tn.tensor(x))
    np.testing.assert_allclose(out.numpy(), np.stack(outs), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h_n.numpy()[0], h, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c_n.numpy()[0], c, rtol=1e-9, atol=1e-12)
    tracked = cell.norm_c.num_batches_tracked.numpy().tolist()
    assert tracked == [1, 1, 1, 0, 0]
    moved = cell.norm_ih.running_mean.numpy()
    expected = 0.1 * (x[1] @ p["weight_ih"].T).mean(0)
    np.testing.assert_allclose(moved[1], expected, rtol=1e-5, atol=1e-7)


# ---- PyTorch parity --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_against_torch(rng, mode, batch_first):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = getattr(torch.nn, mode)(3, 4, num_layers=2, batch_first=batch_first).double()
    ours = getattr(nn, mode)(3, 4, num_layers=2, batch_first=batch_first).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((2, 5, 3) if batch_first else (5, 2, 3))
    states = [rng.standard_normal((2, 2, 4)) for _ in range(2 if mode == "LSTM" else 1)]
    t_in = [torch.tensor(a, requires_grad=True) for a in (x, *states)]
    o_in = [tn.tensor(a, requires_grad=True) for a in (x, *states)]
    t_out, t_final = theirs(t_in[0], tuple(t_in[1:]) if mode == "LSTM" else t_in[1])
    o_out, o_final = ours(o_in[0], tuple(o_in[1:]) if mode == "LSTM" else o_in[1])
    t_final = t_final if mode == "LSTM" else (t_final,)
    o_final = o_final if mode == "LSTM" else (o_final,)
    cotangents = [rng.standard_normal(tuple(t.shape)) for t in (t_out, *t_final)]
    sum((t * torch.tensor(v)).sum() for t, v in zip((t_out, *t_final), cotangents)).backward()
    ours_loss = None
    for t, v in zip((o_out, *o_final), cotangents):
        term = (t * tn.tensor(v)).sum()
        ours_loss = term if ours_loss is None else ours_loss + term
    ours_loss.backward()
    for t, o in zip((t_out, *t_final), (o_out, *o_final)):
        np.testing.assert_allclose(o.numpy(), t.detach().numpy(), rtol=1e-10, atol=1e-12)
    for t, o in zip(t_in, o_in):
        np.testing.assert_allclose(o.grad.numpy(), t.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in theirs.named_parameters():
        ours_grad = dict(ours.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(ours_grad, p.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


# ---- errors ----------------------------------------------------------------------------------


def test_clear_errors():
    lstm = nn.LSTM(3, 2)
    with pytest.raises(ValueError, match=r"expected input \(T, N, 3\)"):
        lstm(tn.zeros(5, 4, 4))
    with pytest.raises(ValueError, match=r"expected hx\[1\] of shape \(1, 4, 2\), got \(1, 4, 3\)"):
        lstm(tn.zeros(5, 4, 3), (tn.zeros(1, 4, 2), tn.zeros(1, 4, 3)))
    with pytest.raises(TypeError, match=r"a tuple \(h, c\)"):
        lstm(tn.zeros(5, 4, 3), tn.zeros(1, 4, 2))
    with pytest.raises(TypeError, match="must be a tensor"):
        nn.GRU(3, 2)(tn.zeros(5, 4, 3), (tn.zeros(1, 4, 2),))
    with pytest.raises(TypeError, match="int64 is not supported"):
        lstm(tn.tensor(np.zeros((5, 4, 3), np.int64)))
    with pytest.raises(ValueError, match=r"LSTMCell: expected input \(N, 3\)"):
        nn.LSTMCell(3, 2)(tn.zeros(4, 2))
    with pytest.raises(ValueError, match=r"expected hx of shape \(4, 2\)"):
        nn.GRUCell(3, 2)(tn.zeros(4, 3), tn.zeros(2))
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'"):
        nn.RNN(3, 2, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="num_layers must be at least 1"):
        nn.GRU(3, 2, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\]"):
        nn.LSTM(3, 2, dropout=1.5)
    with pytest.raises(ValueError, match="must be positive"):
        nn.LSTMCell(0, 2)
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        nn.BatchNormLSTMCell(3, 2, max_steps=0)
    with pytest.raises(ValueError, match=r"StepBatchNorm1d\(3\): expected input \(N, 3\)"):
        nn.StepBatchNorm1d(3, 4)(tn.zeros(2, 4), 0)
    with pytest.raises(ValueError, match="time step must be >= 0"):
        nn.StepBatchNorm1d(3, 4)(tn.zeros(2, 3), -1)
