"""`Optimizer`: the base class that holds parameter groups and per-parameter state.

A subclass only writes `_update(p, g, group, state)`, the rule for one parameter array `p` with
gradient `g`; the base class loops over the groups, skips parameters without a gradient, and
saves and restores everything needed to resume training.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import backend
from ..tensor import Tensor

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


class Optimizer:
    """Updates parameters in place from their `.grad`, one parameter group at a time.

    `params` is an iterable of Parameters, or a list of dicts (parameter groups) each holding
    "params" and any hyper-parameters that should differ from `defaults` for that group.
    """

    def __init__(self, params: Params, defaults: dict[str, Any]):
        if isinstance(params, Tensor):
            raise TypeError("params should be an iterable of Parameters or dicts, got a Tensor")
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        for group in groups if isinstance(groups[0], dict) else [{"params": groups}]:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group: its own options win, the optimizer's defaults fill in the rest."""
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError("a parameter group has an empty parameter list")
        group = {**self.defaults, **group, "params": params}
        self._check_hyperparameters(group)
        known = [p for g in self.param_groups for p in g["params"]] + params
        if len({id(p) for p in known}) != len(known):
            raise ValueError("a parameter appears more than once in the optimizer")
        self.param_groups.append(group)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        """Raise ValueError for an invalid option of `group`; subclasses extend this."""
        for name in ("lr", "weight_decay"):
            if name in group and not group[name] >= 0.0:  # `not >=` also rejects NaN
                raise ValueError(f"invalid {name}: {group[name]} (must be >= 0)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients: set them to None, or to new zero arrays (never zeroed in
        place, since a gradient array may be shared)."""
        for p in self._all_params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad = Tensor(backend.get_array_module(p.grad.data).zeros_like(p.grad.data))

    def step(self) -> None:
        """Update every parameter that has a gradient, in place, outside the autograd graph."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad.data.astype(p.data.dtype, copy=False)
                    self._update(p.data, g, group, self.state.setdefault(p, {}))

    def _update(self, p, g, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Update the array `p` in place from its gradient `g`; `state` persists across steps."""
        raise NotImplementedError(f"{type(self).__name__} does not define _update()")

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot to resume from: hyper-parameters per group, and per-parameter state keyed
        by the parameter's position across all groups (as PyTorch does), arrays as NumPy."""
        index = {id(p): i for i, p in enumerate(self._all_params())}
        groups = [{**g, "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {
            index[id(p)]: {k: _snapshot(v) for k, v in s.items()} for p, s in self.state.items()
        }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyper-parameters and state saved by `state_dict` into this optimizer, whose
        groups must hold the same number of parameters; arrays take each parameter's dtype
        and device."""
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the state dict's parameter groups do not match this optimizer's")
        for group, saved_group in zip(self.param_groups, saved, strict=True):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        params = self._all_params()
        self.state = {
            params[i]: {k: _restore(v, params[i]) for k, v in s.items()}
            for i, s in state_dict["state"].items()
        }

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]


def _snapshot(value):
    """A NumPy copy of a state array (from the CPU or the GPU); other values as they are."""
    if isinstance(value, np.ndarray) or backend.is_cupy(value):
        return np.array(backend.to_device(value, "cpu"))
    return value


def _restore(value, p: Tensor):
    """A floating-point state array copied to `p`'s dtype and device; other values as they are."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return backend.to_device(value.astype(p.dtype), p.device)
    return value
