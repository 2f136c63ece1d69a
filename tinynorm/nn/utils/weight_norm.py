"""`weight_norm(module)`: reparametrize a layer's weight as w = g·v/‖v‖ (PyTorch's names).

The module gets parameters `weight_g` (the norms, one per output unit for dim=0) and `weight_v`
(the direction); before each forward, `weight` is recomputed from them by the fused op
`tinynorm.ops.weight_norm.weight_norm`, so gradients reach g and v.
"""

from __future__ import annotations

from ...ops.weight_norm import norm_axes
from ...ops.weight_norm import weight_norm as _weight_norm_op
from ..module import Module, Parameter


class WeightNormHook:
    """A forward pre-hook that recomputes `module.<name>` from `<name>_g` and `<name>_v`."""

    def __init__(self, name: str, dim: int | None):
        self.name, self.dim = name, dim

    def compute(self, module: Module):
        g = getattr(module, self.name + "_g")
        v = getattr(module, self.name + "_v")
        return _weight_norm_op(g, v, self.dim)

    def __call__(self, module: Module, inputs) -> None:
        object.__setattr__(module, self.name, self.compute(module))


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    """Replace parameter `name` of `module` by `name_g` and `name_v` with w = g·v/‖v‖."""
    weight = module._parameters.get(name)
    if weight is None:
        raise ValueError(f"weight_norm: {type(module).__name__} has no parameter '{name}'")
    if any(
        isinstance(h, WeightNormHook) and h.name == name for h in module._forward_pre_hooks.values()
    ):
        raise RuntimeError(f"weight_norm is already applied to parameter '{name}'")
    xp_data = weight.data
    norm = ((xp_data * xp_data).sum(axis=norm_axes(xp_data.ndim, dim), keepdims=True)) ** 0.5
    del module._parameters[name]
    module.register_parameter(name + "_g", Parameter(norm))
    module.register_parameter(name + "_v", Parameter(xp_data))
    hook = WeightNormHook(name, dim)
    module.register_forward_pre_hook(hook)
    hook(module, ())
    return module


def remove_weight_norm(module: Module, name: str = "weight") -> Module:
    """Fold g·v/‖v‖ back into a plain parameter `name`."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, WeightNormHook) and hook.name == name:
            weight = hook.compute(module).detach()
            del module._forward_pre_hooks[key]
            del module._parameters[name + "_g"], module._parameters[name + "_v"]
            module.__dict__.pop(name, None)
            module.register_parameter(name, Parameter(weight))
            return module
    raise ValueError(f"weight_norm of '{name}' not found in {type(module).__name__}")
