"""The gate arithmetic of one recurrent step, each a single op with a closed-form backward.

Gate pre-activations come in PyTorch's layout: LSTM (N, 4H) = [i, f, g, o], GRU (N, 3H) =
[r, z, n]. The matrix products around them are ordinary `linear` ops, and backpropagation
through time is the engine's backward over the unrolled steps.
"""

from __future__ import annotations

from ..autograd import Function
from ..backend import get_array_module
from ..tensor import Tensor
from .elementwise import logistic


def _split(gates, k: int) -> list:
    h = gates.shape[-1] // k
    return [gates[..., j * h : (j + 1) * h] for j in range(k)]


class LSTMCellState(Function):
    """c' = σ(f)·c + σ(i)·tanh(g) from gates [i, f, g, o] (N, 4H) and c (N, H);
    di = dc'·tanh(g)·σ'(i), df = dc'·c·σ'(f), dg = dc'·σ(i)·(1 - tanh²g), do = 0, dc = dc'·σ(f)."""

    def forward(self, gates, c):
        xp = get_array_module(gates)
        i, f, g, _ = _split(gates, 4)
        self.i, self.f, self.g, self.c = logistic(i), logistic(f), xp.tanh(g), c
        return self.f * c + self.i * self.g

    def backward(self, grad):
        xp = get_array_module(grad)
        dgates = xp.zeros(grad.shape[:-1] + (4 * grad.shape[-1],), grad.dtype)
        di, df, dg, _ = _split(dgates, 4)
        di[...] = grad * self.g * self.i * (1 - self.i)
        df[...] = grad * self.c * self.f * (1 - self.f)
        dg[...] = grad * self.i * (1 - self.g * self.g)
        return dgates, grad * self.f


class LSTMHidden(Function):
    """h = σ(o)·tanh(c) from gates [i, f, g, o] (N, 4H) and a cell state c (N, H), plain or
    normalized; do = dh·tanh(c)·σ'(o), di = df = dg = 0, dc = dh·σ(o)·(1 - tanh²c)."""

    def forward(self, gates, c):
        xp = get_array_module(gates)
        self.o, self.t = logistic(_split(gates, 4)[3]), xp.tanh(c)
        return self.o * self.t

    def backward(self, grad):
        xp = get_array_module(grad)
        dgates = xp.zeros(grad.shape[:-1] + (4 * grad.shape[-1],), grad.dtype)
        _split(dgates, 4)[3][...] = grad * self.t * self.o * (1 - self.o)
        return dgates, grad * self.o * (1 - self.t * self.t)


class GRUCell(Function):
    """h' = (1 - z)·n + z·h from gi = W_ih x + b_ih and gh = W_hh h + b_hh, each [r, z, n]
    (N, 3H): r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r·gh_n).
    Backward: dz = dh'·(h - n), da = dh'·(1 - z)·(1 - n²) for a = gi_n + r·gh_n, dr = da·gh_n;
    dgi = [dr·σ'(r), dz·σ'(z), da], dgh = [dr·σ'(r), dz·σ'(z), da·r], dh = dh'·z."""

    def forward(self, gi, gh, h):
        xp = get_array_module(gi)
        (ir, iz, i_n), (hr, hz, hn) = _split(gi, 3), _split(gh, 3)
        self.r, self.z = logistic(ir + hr), logistic(iz + hz)
        self.n = xp.tanh(i_n + self.r * hn)
        self.h, self.hn = h, hn
        return (1 - self.z) * self.n + self.z * h

    def backward(self, grad):
        xp = get_array_module(grad)
        da = grad * (1 - self.z) * (1 - self.n * self.n)
        dr = da * self.hn * self.r * (1 - self.r)
        dz = grad * (self.h - self.n) * self.z * (1 - self.z)
        return (
            xp.concatenate([dr, dz, da], -1),
            xp.concatenate([dr, dz, da * self.r], -1),
            (grad * self.z),
        )


def _check_gates(op: str, gates: Tensor, k: int, state: Tensor) -> None:
    if gates.shape[-1] != k * state.shape[-1] or gates.shape[:-1] != state.shape[:-1]:
        raise ValueError(
            f"{op}: gates of shape {gates.shape} do not match a state of shape {state.shape} "
            f"(expected gates (..., {k} × {state.shape[-1]}))"
        )


def lstm_cell_state(gates: Tensor, c: Tensor) -> Tensor:
    """An LSTM's next cell state c' = σ(f)·c + σ(i)·tanh(g); gates (N, 4H) = [i, f, g, o]."""
    _check_gates("lstm_cell_state", gates, 4, c)
    return LSTMCellState.apply(gates, c)


def lstm_hidden(gates: Tensor, c: Tensor) -> Tensor:
    """An LSTM's output h = σ(o)·tanh(c); gates (N, 4H) = [i, f, g, o], c (N, H)."""
    _check_gates("lstm_hidden", gates, 4, c)
    return LSTMHidden.apply(gates, c)


def gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """A GRU's next state from the input and hidden projections gi, gh (N, 3H) = [r, z, n]."""
    _check_gates("gru_cell", gi, 3, h)
    _check_gates("gru_cell", gh, 3, h)
    return GRUCell.apply(gi, gh, h)
