"""Fold an inference-mode batch norm into the convolution or linear layer before it.

With σ = sqrt(running_var + ε): BN(W x + b) = (W x + b - μ)·γ/σ + β = W' x + b' where
W' = W·γ/σ (per output channel) and b' = (b - μ)·γ/σ + β. The fused layer computes the
eval-mode output of the pair in one pass (seed 003's "fused batch normalization").
"""

from __future__ import annotations

import copy

from ..linear import Conv2d, Linear
from ..module import Module, Parameter
from ..normalization import _BatchNorm
from .weight_norm import WeightNormHook, remove_weight_norm


def _folded(layer: Module, bn: _BatchNorm):
    if not isinstance(bn, _BatchNorm) or bn.running_mean is None:
        raise ValueError("fusion needs a BatchNorm layer with running statistics")
    out = layer.weight.shape[0]
    if bn.num_features != out:
        raise ValueError(
            f"cannot fuse {bn.num_features}-channel batch norm after a layer with {out} outputs"
        )
    xp_var = bn.running_var.data
    scale = (1 / (xp_var + bn.eps) ** 0.5) * (1 if bn.weight is None else bn.weight.data)
    shift = 0 if bn.bias is None else bn.bias.data
    bias = 0 if layer.bias is None else layer.bias.data
    weight = layer.weight.data * scale.reshape((out,) + (1,) * (layer.weight.ndim - 1))
    return weight, (bias - bn.running_mean.data) * scale + shift


def _fuse(layer: Module, bn: _BatchNorm) -> Module:
    fused = copy.deepcopy(layer)
    if any(isinstance(h, WeightNormHook) for h in fused._forward_pre_hooks.values()):
        remove_weight_norm(fused)  # fold the current g·v/‖v‖, not a weight cached by the hook
    weight, bias = _folded(fused, bn)
    fused.weight = Parameter(weight.astype(layer.weight.dtype))
    fused.bias = Parameter(bias.astype(layer.weight.dtype))
    return fused.eval()


def fuse_conv_bn(conv: Conv2d, bn: _BatchNorm) -> Conv2d:
    """A Conv2d equal to `bn(conv(x))` with `bn` in eval mode."""
    return _fuse(conv, bn)


def fuse_linear_bn(linear: Linear, bn: _BatchNorm) -> Linear:
    """A Linear equal to `bn(linear(x))` with `bn` in eval mode."""
    return _fuse(linear, bn)
