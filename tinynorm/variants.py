"""Every norm variant in one table, as the examples, the benchmarks and the tests see it.

The examples' `--norm` choices, the rows of `bench/kernels.py` and the test matrix (float64
gradient checks, the NumPy reference, PyTorch parity, the GPU path under the CUDA simulator)
all come from `VARIANTS`. Adding a variant (see docs/ADDING_A_NORM.md): its functional form in
`tinynorm/ops/norms.py` (a `Statistic` and one `Normalize` call), its layer in
`tinynorm/nn/normalization.py`, its reference in `tinynorm/reference.py`, and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import reference


@dataclass(frozen=True)
class Variant:
    """One norm layer. `make(nn, shape)` builds it from `tinynorm.nn`, or from `torch.nn` when
    `in_torch` (PyTorch has the same layer with the same semantics), for inputs of `shape`;
    `reference(layer, x, dy=None)` is its code in `tinynorm.reference`; `ranks` the input
    ranks it takes; `key` the examples' --norm name (for variants of (N, C, H, W) maps) and
    `summary` what that choice trains with."""

    name: str
    make: Callable[[ModuleType, tuple[int, ...]], Any]
    reference: Callable
    key: str | None = None
    summary: str = ""
    in_torch: bool = False
    ranks: tuple[int, ...] = (4,)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "BatchNorm2d",
        lambda nn, s: nn.BatchNorm2d(s[1]),
        reference.batch_norm,
        "bn",
        "BatchNorm2d",
        in_torch=True,
    ),
    Variant(
        "BatchRenorm2d",
        lambda nn, s: nn.BatchRenorm2d(s[1]),
        reference.batch_renorm,
        "brn",
        "BatchRenorm2d (the paper's r, d schedule scaled to the run)",
    ),
    Variant(
        "LayerNorm",
        lambda nn, s: nn.LayerNorm(s[1:]),
        reference.layer_norm,
        "ln",
        "LayerNorm over (C, H, W)",
        in_torch=True,
        ranks=(2, 4),
    ),
    Variant(
        "InstanceNorm2d",
        lambda nn, s: nn.InstanceNorm2d(s[1], affine=True),
        reference.instance_norm,
        "in",
        "InstanceNorm2d (affine)",
        in_torch=True,
    ),
    Variant(
        "GroupNorm",
        lambda nn, s: nn.GroupNorm(4, s[1]),
        reference.group_norm,
        "gn",
        "GroupNorm with 4 groups",
        in_torch=True,
    ),
    Variant(
        "MeanOnlyBatchNorm2d",
        lambda nn, s: nn.MeanOnlyBatchNorm2d(s[1]),
        reference.mean_only_batch_norm,
        "mobn",
        "mean-only batch norm",
    ),
    Variant(
        "BatchInstanceNorm2d",
        lambda nn, s: nn.BatchInstanceNorm2d(s[1]),
        reference.batch_instance_norm,
        "bin",
        "BatchInstanceNorm2d",
    ),
    Variant(
        "SwitchableNorm2d",
        lambda nn, s: nn.SwitchableNorm2d(s[1]),
        reference.switchable_norm,
        "sn",
        "SwitchableNorm2d",
    ),
    Variant(
        "BatchLayerNorm",
        lambda nn, s: nn.BatchLayerNorm(s[1]),
        reference.batch_layer_norm,
        "bln",
        "BatchLayerNorm",
    ),
    Variant(
        "RMSNorm",
        lambda nn, s: nn.RMSNorm(s[1:]),
        reference.rms_norm,
        "rms",
        "RMSNorm over (C, H, W)",
        in_torch=True,
        ranks=(2, 4),
    ),
    Variant(
        "FilterResponseNorm2d",
        lambda nn, s: nn.FilterResponseNorm2d(s[1]),
        reference.filter_response_norm,
        "frn",
        "FilterResponseNorm2d with its TLU",
    ),
    Variant(
        "BatchNorm1d",
        lambda nn, s: nn.BatchNorm1d(s[1]),
        reference.batch_norm,
        in_torch=True,
        ranks=(2,),
    ),
)

BY_KEY = {v.key: v for v in VARIANTS if v.key is not None}  # the examples' --norm choices
