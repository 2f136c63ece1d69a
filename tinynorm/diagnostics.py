"""Diagnostics: watch what flows through a layer while a model trains.

`PercentileTracer` records chosen percentiles of a module's input or output at every forward
pass (or every n-th), through a forward hook, so a training loop needs no change. This is how
Ioffe & Szegedy's Figure 1 follows "the input distribution to a typical sigmoid" over training
(`python -m tinynorm.examples.bn_figure1`).

The q-th percentile of n values is NumPy's default ("linear") definition: sort the values into
v_0 ≤ v_1 ≤ … ≤ v_{n-1}, let h = (n - 1)·q/100, and interpolate
P_q = v_⌊h⌋ + (h - ⌊h⌋)·(v_⌊h⌋+1 - v_⌊h⌋). The median is P_50; for a Gaussian N(μ, σ²),
P_15 ≈ μ - 1.04σ and P_85 ≈ μ + 1.04σ, so the 15th-85th band spans about two standard deviations.

Cost: one `percentile` call (a partial sort, O(n)) per recorded pass, on the array's own device
(NumPy or CuPy), and a copy of k numbers to the host. Tracing one unit of a (60, 100) activation
takes tens of microseconds, cheap enough to leave on during training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import backend
from .nn.module import Module
from .tensor import Tensor


class TraceRecord(NamedTuple):
    """One recorded forward pass: its step number and the percentiles, in the order asked."""

    step: int
    values: tuple[float, ...]


class PercentileTracer:
    """Record percentiles of the values entering (`which="input"`) or leaving
    (`which="output"`) `module` on each forward pass.

    - `percentiles`: the q's in [0, 100] to record, e.g. (15, 50, 85);
    - `index`: None traces all the values of the batch; an integer traces one unit: the slice
      `index` along the feature axis `dim` (1 for (N, C) and (N, C, ...) layouts), e.g. one
      sigmoid's input over the N examples of the mini-batch;
    - `every`: record one pass in `every` (steps 0, every, 2·every, ...);
    - `training_only`: count and record only passes made in training mode (the default), so
      that evaluation in `model.eval()` leaves the trace alone.

    A pass's step number is the count of the counted passes before it: 0 for the first. With one
    forward pass per optimizer update, step s therefore sees the weights after s updates.

    `records` is the list of `TraceRecord(step, values)`; `steps` and `values` give them as
    NumPy arrays, `to_rows()` as dicts for a CSV. `remove()` takes the hook off (the records
    stay); as a context manager the tracer removes itself on exit.

    Example: the median and the 15th/85th percentiles of the first unit entering a sigmoid

    >>> import tinynorm as tn
    >>> from tinynorm import nn
    >>> from tinynorm.diagnostics import PercentileTracer
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    >>> with PercentileTracer(model[1], (15, 50, 85), which="input", index=0) as tracer:
    ...     for _ in range(3):
    ...         out = model(tn.randn(8, 4))
    >>> tracer.steps.tolist(), tracer.values.shape, tracer.columns
    ([0, 1, 2], (3, 3), ['step', 'p15', 'p50', 'p85'])
    """

    def __init__(
        self,
        module: Module,
        percentiles: Sequence[float] = (15, 50, 85),
        which: str = "input",
        index: int | None = None,
        dim: int = 1,
        every: int = 1,
        training_only: bool = True,
    ):
        if which not in ("input", "output"):
            raise ValueError(f"which must be 'input' or 'output', got {which!r}")
        self.percentiles = tuple(float(q) for q in percentiles)
        if not self.percentiles or not all(0 <= q <= 100 for q in self.percentiles):
            raise ValueError(f"percentiles must be a non-empty list in [0, 100], got {percentiles}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.module, self.which, self.index, self.dim = module, which, index, dim
        self.every, self.training_only = every, training_only
        self.step = 0  # the number of counted passes so far: the next pass's step number
        self.records: list[TraceRecord] = []
        if which == "input":
            self._handle = module.register_forward_pre_hook(
                lambda _module, inputs: self._observe(inputs[0])
            )
        else:
            self._handle = module.register_forward_hook(
                lambda _module, _inputs, output: self._observe(output)
            )

    @property
    def columns(self) -> list[str]:
        """The keys of `to_rows()`: "step", then "p15", "p50", ... (one per percentile)."""
        return ["step", *(f"p{q:g}" for q in self.percentiles)]

    @property
    def steps(self) -> np.ndarray:
        """The recorded step numbers, shape (n_records,)."""
        return np.array([r.step for r in self.records], dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        """The recorded percentiles, shape (n_records, n_percentiles)."""
        return np.array([r.values for r in self.records], dtype=np.float64).reshape(
            len(self.records), len(self.percentiles)
        )

    def to_rows(self) -> list[dict[str, float]]:
        """One dict per record, keyed by `columns` (ready for csv.DictWriter)."""
        return [dict(zip(self.columns, (r.step, *r.values))) for r in self.records]

    def remove(self) -> None:
        """Stop tracing; the records are kept."""
        self._handle.remove()

    def __enter__(self) -> PercentileTracer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _observe(self, tensor: Tensor) -> None:
        """The hook: count the pass, and record it when its step is due."""
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"PercentileTracer traces Tensors, but the {self.which} of "
                f"{type(self.module).__name__} is a {type(tensor).__name__}"
            )
        if self.training_only and not self.module.training:
            return
        step, self.step = self.step, self.step + 1
        if step % self.every:
            return
        data = tensor.data  # the raw array: reading it adds nothing to the autograd graph
        xp = backend.get_array_module(data)
        if self.index is not None:
            data = xp.take(data, self.index, axis=self.dim)
        q = xp.percentile(data, self.percentiles)  # over all the (remaining) values
        values = backend.to_device(q, "cpu").tolist()
        self.records.append(TraceRecord(step, tuple(values)))

    def __repr__(self) -> str:
        unit = "all values" if self.index is None else f"unit {self.index} of dim {self.dim}"
        return (
            f"PercentileTracer({type(self.module).__name__} {self.which}, {unit}, "
            f"percentiles={self.percentiles}, every={self.every}, {len(self.records)} records)"
        )
