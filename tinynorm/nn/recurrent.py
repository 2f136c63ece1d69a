"""Recurrent layers with PyTorch's names, arguments, parameter names, gate order and
initialization: the cells `RNNCell`, `LSTMCell`, `GRUCell` (one step) and the sequence modules
`RNN`, `LSTM`, `GRU` (layers × time steps), so that a PyTorch state_dict loads unchanged.

One step, with gate pre-activations in PyTorch's order (LSTM [i, f, g, o], GRU [r, z, n]):

    RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)        (or relu)
    LSTM  [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh
          c' = σ(f)c + σ(i)tanh(g);  h' = σ(o)tanh(c')
    GRU   [r, z] = σ(W_ih x + b_ih + W_hh h + b_hh)[:2H]
          n = tanh(W_in x + b_in + r·(W_hn h + b_hn));  h' = (1 - z)n + z·h

Backpropagation through time is the engine's ordinary backward over the unrolled steps; the gate
arithmetic of a step is one op each (`tinynorm.ops.recurrent`). A state is a tuple: (h,) for RNN
and GRU, (h, c) for LSTM, each (N, H).
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..backend import get_array_module
from ..ops.normalize import check_dtype
from ..tensor import Tensor
from . import init
from .module import Module, Parameter

State = tuple[Tensor, ...]


def rnn_step(x, state, w_ih, w_hh, b_ih, b_hh, nonlinearity: str = "tanh") -> State:
    pre = ops.add(ops.linear(x, w_ih, b_ih), ops.linear(state[0], w_hh, b_hh))
    return (ops.tanh(pre) if nonlinearity == "tanh" else ops.relu(pre),)


def lstm_step(x, state, w_ih, w_hh, b_ih, b_hh) -> State:
    h, c = state
    gates = ops.add(ops.linear(x, w_ih, b_ih), ops.linear(h, w_hh, b_hh))
    c = ops.lstm_cell_state(gates, c)
    return ops.lstm_hidden(gates, c), c


def gru_step(x, state, w_ih, w_hh, b_ih, b_hh) -> State:
    h = state[0]
    return (ops.gru_cell(ops.linear(x, w_ih, b_ih), ops.linear(h, w_hh, b_hh), h),)


MODES = {"RNN": (1, 1), "LSTM": (4, 2), "GRU": (3, 1)}  # gates, states


def _check_nonlinearity(name: str, nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{name}: unknown nonlinearity {nonlinearity!r} (tanh or relu)")
    return nonlinearity


def _check_sizes(name: str, input_size: int, hidden_size: int) -> None:
    if input_size <= 0 or hidden_size <= 0:
        raise ValueError(
            f"{name}: input_size and hidden_size must be positive, got {input_size} and "
            f"{hidden_size}"
        )


def _register_weights(module: Module, suffix: str, sizes: tuple[int, int, int], bias: bool):
    """weight_ih{suffix} (G·H, in), weight_hh{suffix} (G·H, H) and, with `bias`, bias_ih{suffix}
    and bias_hh{suffix} (G·H,); else those two are registered as None."""
    gates, input_size, hidden_size = sizes
    rows = gates * hidden_size
    module.register_parameter(
        f"weight_ih{suffix}", Parameter(np.empty((rows, input_size), np.float32))
    )
    module.register_parameter(
        f"weight_hh{suffix}", Parameter(np.empty((rows, hidden_size), np.float32))
    )
    for name in ("bias_ih", "bias_hh"):
        value = Parameter(np.empty(rows, np.float32)) if bias else None
        module.register_parameter(name + suffix, value)


def reset_uniform(module: Module, hidden_size: int) -> None:
    """PyTorch's initialization of recurrent layers: every parameter ~ U(±1/√hidden_size)."""
    bound = 1 / math.sqrt(hidden_size)
    for p in module.parameters():
        init.uniform_(p, -bound, bound)


def _zeros(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    return Tensor(get_array_module(like.data).zeros(shape, like.dtype))


def _check_state(name: str, given, shape: tuple[int, ...], states: int) -> State:
    """`given` (a tensor, or a tuple of `states` tensors for an LSTM) checked against `shape`."""
    parts = given if states == 2 and isinstance(given, tuple) else (given,)
    if len(parts) != states or not all(isinstance(p, Tensor) for p in parts):
        kind = "a tuple (h, c) of tensors" if states == 2 else "a tensor"
        raise TypeError(f"{name}: the initial state must be {kind}")
    for k, p in enumerate(parts):
        if tuple(p.shape) != shape:
            which = f"hx[{k}]" if states == 2 else "hx"
            raise ValueError(f"{name}: expected {which} of shape {shape}, got {tuple(p.shape)}")
    return parts


class Cell(Module):
    """One recurrent step on (N, input_size) or unbatched (input_size,) input. Subclasses set
    `gates` (G), `states` (1, or 2 for an LSTM's (h, c)) and define `step(x, state, t) ->
    state`; `t`, the time step, matters only to cells with per-step statistics. The base
    registers weight_ih (G·H, in), weight_hh (G·H, H) and, where `bias` and `biased_weights`,
    bias_ih and bias_hh (G·H,) (else None), all ~ U(±1/√H); normalized cells, whose norms
    carry the biases, set `biased_weights = False`."""

    gates = 1
    states = 1
    biased_weights = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        _check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        sizes = (self.gates, input_size, hidden_size)
        _register_weights(self, "", sizes, bias and self.biased_weights)
        reset_uniform(self, hidden_size)

    def weights(self) -> tuple:
        """(weight_ih, weight_hh, bias_ih, bias_hh), the biases None when absent."""
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def step(self, x: Tensor, state: State, t: int) -> State:
        raise NotImplementedError

    def forward(self, input: Tensor, hx=None, time_step: int = 0):
        """`hx`: h (N, H), or (h, c) for an LSTM; zeros when None. Returns h', or (h', c')."""
        name = type(self).__name__
        check_dtype(name, input)
        if input.ndim not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected input (N, {self.input_size}) or ({self.input_size},), "
                f"got shape {input.shape}"
            )
        batched = input.ndim == 2
        x = input if batched else ops.reshape(input, (1, self.input_size))
        shape = (x.shape[0], self.hidden_size)
        if hx is None:
            state = tuple(_zeros(x, shape) for _ in range(self.states))
        else:
            state = _check_state(name, hx, shape if batched else shape[1:], self.states)
            state = state if batched else tuple(ops.reshape(s, shape) for s in state)
        out = self.step(x, state, time_step)
        out = out if batched else tuple(ops.reshape(s, shape[1:]) for s in out)
        return out if self.states == 2 else out[0]

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


class RNNCell(Cell):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh), or relu with nonlinearity="relu"."""

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ):
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = _check_nonlinearity("RNNCell", nonlinearity)

    def step(self, x: Tensor, state: State, t: int) -> State:
        return rnn_step(x, state, *self.weights(), self.nonlinearity)


class LSTMCell(Cell):
    """c' = σ(f)c + σ(i)tanh(g), h' = σ(o)tanh(c'); [i, f, g, o] = W_ih x + b_ih + W_hh h + b_hh."""

    gates, states = 4, 2

    def step(self, x: Tensor, state: State, t: int) -> State:
        return lstm_step(x, state, *self.weights())


class GRUCell(Cell):
    """h' = (1 - z)n + z·h, n = tanh(W_in x + b_in + r·(W_hn h + b_hn)), r and z sigmoid gates."""

    gates = 3

    def step(self, x: Tensor, state: State, t: int) -> State:
        return gru_step(x, state, *self.weights())


class Recurrent(Module):
    """Layers × time steps of a cell: input (T, N, input_size), or (N, T, input_size) with
    batch_first, or unbatched (T, input_size); layer k > 0 reads layer k-1's outputs, through
    dropout with probability `dropout` in training. Returns output (T, N, H) (the last layer's
    h at every step; (N, T, H) with batch_first) and the final state h_n (num_layers, N, H), or
    (h_n, c_n) for an LSTM. Subclasses set `states` and define `build(**layer_args)`, which
    makes the layers from the keyword arguments after `dropout`, and `layer_step(k, x, state,
    t)`."""

    states = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        **layer_args,
    ):
        super().__init__()
        name = type(self).__name__
        _check_sizes(name, input_size, hidden_size)
        if num_layers < 1:
            raise ValueError(f"{name}: num_layers must be at least 1, got {num_layers}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, dropout
        self.build(**layer_args)

    def build(self, **layer_args) -> None:
        raise NotImplementedError

    def layer_step(self, k: int, x: Tensor, state: State, t: int) -> State:
        raise NotImplementedError

    def _initial(self, hx, x: Tensor, batched: bool) -> list[State]:
        """Each layer's initial state from hx (zeros when None), as (N, H) tensors."""
        n, hidden = x.shape[1], self.hidden_size
        if hx is None:
            return [tuple(_zeros(x, (n, hidden)) for _ in range(self.states))] * self.num_layers
        expected = (self.num_layers, n, hidden) if batched else (self.num_layers, hidden)
        given = _check_state(type(self).__name__, hx, expected, self.states)
        return [
            tuple(ops.reshape(ops.getitem(s, k), (n, hidden)) for s in given)
            for k in range(self.num_layers)
        ]

    def forward(self, input: Tensor, hx=None):
        name = type(self).__name__
        check_dtype(name, input)
        if input.ndim not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected input (T, N, {self.input_size}) (batch_first: (N, T, "
                f"{self.input_size})) or unbatched (T, {self.input_size}), got shape {input.shape}"
            )
        batched = input.ndim == 3
        if not batched:
            x = ops.reshape(input, (input.shape[0], 1, self.input_size))
        else:
            x = ops.permute(input, (1, 0, 2)) if self.batch_first else input
        states = self._initial(hx, x, batched)
        steps = [ops.getitem(x, t) for t in range(x.shape[0])]
        finals = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                steps = [ops.dropout(s, self.dropout, True) for s in steps]
            state, outputs = states[k], []
            for t, x_t in enumerate(steps):
                state = self.layer_step(k, x_t, state, t)
                outputs.append(state[0])
            finals.append(state)
            steps = outputs
        output = ops.stack(steps)
        final = tuple(ops.stack([f[j] for f in finals]) for j in range(self.states))
        if not batched:
            output = ops.reshape(output, (output.shape[0], self.hidden_size))
            final = tuple(ops.reshape(f, (self.num_layers, self.hidden_size)) for f in final)
        elif self.batch_first:
            output = ops.permute(output, (1, 0, 2))
        return output, (final if self.states == 2 else final[0])

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}"
        )


class RNNBase(Recurrent):
    """PyTorch's multi-layer RNN/LSTM/GRU (`mode`): layer k's weights are weight_ih_l{k}
    (G·H, in_k), weight_hh_l{k} (G·H, H), bias_ih_l{k} and bias_hh_l{k} (G·H,), all
    ~ U(±1/√H). Arguments: input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, as in `Recurrent`."""

    mode: str

    def build(self) -> None:
        gates, self.states = MODES[self.mode]
        for k in range(self.num_layers):
            sizes = (gates, self.input_size if k == 0 else self.hidden_size, self.hidden_size)
            _register_weights(self, f"_l{k}", sizes, self.bias)
        reset_uniform(self, self.hidden_size)

    def layer_step(self, k: int, x: Tensor, state: State, t: int) -> State:
        w = [getattr(self, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if self.mode == "LSTM":
            return lstm_step(x, state, *w)
        if self.mode == "GRU":
            return gru_step(x, state, *w)
        return rnn_step(x, state, *w, self.nonlinearity)


class RNN(RNNBase):
    """Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) (or relu), per layer."""

    mode = "RNN"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            nonlinearity=nonlinearity,
        )

    def build(self, nonlinearity: str) -> None:
        self.nonlinearity = _check_nonlinearity("RNN", nonlinearity)
        super().build()


class LSTM(RNNBase):
    """Long short-term memory, gates [i, f, g, o]; returns output, (h_n, c_n)."""

    mode = "LSTM"


class GRU(RNNBase):
    """Gated recurrent unit, gates [r, z, n]; returns output, h_n."""

    mode = "GRU"
