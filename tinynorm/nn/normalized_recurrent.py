"""Normalized recurrent cells and their multi-layer sequence modules.

- Layer norm (Ba, Kiros & Hinton 2016, §3.1): LN on the input-to-hidden and hidden-to-hidden
  pre-activations separately and on the cell state, each with its own gain and bias:
      [i, f, g, o] = LN(W_ih x) + LN(W_hh h);  c' = σ(f)c + σ(i)tanh(g);  h' = σ(o)tanh(LN(c'))
  and for the GRU, r, z, n from gi = LN(W_ih x), gh = LN(W_hh h) as in `GRUCell`.
- Batch norm with statistics per time step (Cooijmans et al. 2016, "Recurrent Batch
  Normalization"): the same places, with `StepBatchNorm1d`; the two pre-activation norms have no
  β (the gate bias b, `bias_ih`, takes its place) and γ starts at 0.1, as the paper advises:
      [i, f, g, o] = BN_t(W_ih x) + BN_t(W_hh h) + b;  h' = σ(o)tanh(BN_t(c'))
- Batch-layer norm per time step (Ziaee & Çano 2022): the same cell with `StepBatchLayerNorm`
  (γ starts at 1, BLN's own default).
The weights are ~ U(±1/√H), as in PyTorch's cells; states as in `tinynorm.nn.recurrent`.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..tensor import Tensor
from .container import ModuleList
from .module import Parameter
from .normalization import LayerNorm
from .recurrent import Cell, Recurrent, State
from .step_norms import StepBatchLayerNorm, StepBatchNorm1d


class LayerNormLSTMCell(Cell):
    """LSTM cell with layer norm on W_ih x, W_hh h (4H each) and on c' (H); bias=False drops
    the three norms' β. eps: the norms' ε."""

    gates, states, biased_weights = 4, 2, False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, eps: float = 1e-5):
        super().__init__(input_size, hidden_size, bias)
        self.ln_ih = LayerNorm(4 * hidden_size, eps, bias=bias)
        self.ln_hh = LayerNorm(4 * hidden_size, eps, bias=bias)
        self.ln_c = LayerNorm(hidden_size, eps, bias=bias)

    def step(self, x: Tensor, state: State, t: int) -> State:
        h, c = state
        gates = ops.add(
            self.ln_ih(ops.linear(x, self.weight_ih)), self.ln_hh(ops.linear(h, self.weight_hh))
        )
        c = ops.lstm_cell_state(gates, c)
        return ops.lstm_hidden(gates, self.ln_c(c)), c


class LayerNormGRUCell(Cell):
    """GRU cell with layer norm on W_ih x and W_hh h (3H each); their β take the biases'
    places (b_hn stays inside r·(...), as in PyTorch's GRU)."""

    gates, biased_weights = 3, False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, eps: float = 1e-5):
        super().__init__(input_size, hidden_size, bias)
        self.ln_ih = LayerNorm(3 * hidden_size, eps, bias=bias)
        self.ln_hh = LayerNorm(3 * hidden_size, eps, bias=bias)

    def step(self, x: Tensor, state: State, t: int) -> State:
        h = state[0]
        gi = self.ln_ih(ops.linear(x, self.weight_ih))
        return (ops.gru_cell(gi, self.ln_hh(ops.linear(h, self.weight_hh)), h),)


class BatchNormLSTMCell(Cell):
    """LSTM cell with batch norm per time step (Cooijmans et al. 2016) on W_ih x, W_hh h and
    c'; `max_steps` rows of running estimates (steps beyond reuse the last), `momentum` as in
    BatchNorm1d. The time step is `forward`'s `time_step` (a sequence module passes t)."""

    gates, states, biased_weights = 4, 2, False
    norm = StepBatchNorm1d
    weight_init = 0.1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        max_steps: int = 100,
        momentum: float | None = 0.1,
    ):
        super().__init__(input_size, hidden_size, bias)
        gate_bias = Parameter(np.zeros(4 * hidden_size, np.float32)) if bias else None
        self.register_parameter("bias_ih", gate_bias)
        common = dict(max_steps=max_steps, momentum=momentum, weight_init=self.weight_init)
        self.norm_ih = self.norm(4 * hidden_size, bias=False, **common)
        self.norm_hh = self.norm(4 * hidden_size, bias=False, **common)
        self.norm_c = self.norm(hidden_size, bias=bias, **common)

    def step(self, x: Tensor, state: State, t: int) -> State:
        h, c = state
        gates = ops.add(
            self.norm_ih(ops.linear(x, self.weight_ih), t),
            self.norm_hh(ops.linear(h, self.weight_hh), t),
        )
        if self.bias_ih is not None:
            gates = ops.add(gates, self.bias_ih)
        c = ops.lstm_cell_state(gates, c)
        return ops.lstm_hidden(gates, self.norm_c(c, t)), c


class BatchLayerNormLSTMCell(BatchNormLSTMCell):
    """`BatchNormLSTMCell` with batch-layer norm per time step (`StepBatchLayerNorm`)."""

    norm = StepBatchLayerNorm
    weight_init = 1.0


class _CellStack(Recurrent):
    """`num_layers` cells of type `cell`, layer k reading layer k-1's outputs: the arguments of
    `Recurrent` (input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0), then keywords for each cell. state_dict keys: layers.{k}.<the cell's>."""

    cell: type[Cell]

    def build(self, **cell_args) -> None:
        self.states = self.cell.states
        sizes = [self.input_size] + [self.hidden_size] * (self.num_layers - 1)
        self.layers = ModuleList(
            self.cell(n, self.hidden_size, self.bias, **cell_args) for n in sizes
        )

    def layer_step(self, k: int, x: Tensor, state: State, t: int) -> State:
        return self.layers[k].step(x, state, t)


class LayerNormLSTM(_CellStack):
    """Multi-layer `LayerNormLSTMCell`s over time; returns output, (h_n, c_n)."""

    cell = LayerNormLSTMCell


class LayerNormGRU(_CellStack):
    """Multi-layer `LayerNormGRUCell`s over time; returns output, h_n."""

    cell = LayerNormGRUCell


class BatchNormLSTM(_CellStack):
    """Multi-layer `BatchNormLSTMCell`s over time (statistics per time step)."""

    cell = BatchNormLSTMCell


class BatchLayerNormLSTM(_CellStack):
    """Multi-layer `BatchLayerNormLSTMCell`s over time (statistics per time step)."""

    cell = BatchLayerNormLSTMCell
