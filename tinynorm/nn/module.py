"""`Module` and `Parameter`: the container for learnable state, as in PyTorch.

A module registers what is assigned to it: a `Parameter` becomes a parameter, a `Module` a
child, and `register_buffer` adds non-learnable state (running statistics) that `state_dict`
saves and `.to()` / `.double()` move along with the parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that a Module registers as learnable (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data: Tensor | np.ndarray, requires_grad: bool = True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict` did not match (always empty with strict=True)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class RemovableHandle:
    """Returned by `register_forward_hook`: `remove()` takes the hook out again."""

    def __init__(self, hooks: dict):
        self.hooks = hooks

    def remove(self) -> None:
        self.hooks.pop(self, None)

    __call__ = remove


def _converted(key: str, value, target: Tensor):
    """`value` (a Tensor or an array) as a new array in `target`'s shape, dtype and device, or
    a ValueError (shape) or TypeError (dtype) naming `key`."""
    array = np.asarray(value.numpy() if isinstance(value, Tensor) else value)
    if array.shape != target.shape:
        raise ValueError(
            f"load_state_dict: {key} has shape {array.shape} in the state dict but "
            f"{target.shape} in the module"
        )
    numeric = "biufc" if target.dtype.kind == "c" else "biuf"
    if array.dtype.kind not in numeric:
        raise TypeError(
            f"load_state_dict: {key} has dtype {array.dtype} in the state dict, which cannot "
            f"become the module's {target.dtype}"
        )
    return backend.to_device(array.astype(target.dtype), target.device)


class Module:
    """Base class of every layer and model: override `forward`, call the module like a function."""

    training: bool

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration -----------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError("call super().__init__() before assigning to a Module")
        params, buffers, modules = self._parameters, self._buffers, self._modules
        if isinstance(value, (Parameter, Module)):
            target = params if isinstance(value, Parameter) else modules
            for table in (params, buffers, modules):
                if table is not target:  # replacing in `target` keeps the registration order
                    table.pop(name, None)
            self._non_persistent.discard(name)
            self.__dict__.pop(name, None)
            target[name] = value
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"cannot assign {type(value).__name__} to buffer '{name}' "
                    "(a Tensor or None expected)"
                )
            buffers[name] = value
        elif name in params and value is not None:
            raise TypeError(
                f"cannot assign {type(value).__name__} to parameter '{name}' "
                "(use nn.Parameter or del the parameter first)"
            )
        elif name in modules and value is not None:
            raise TypeError(
                f"cannot assign {type(value).__name__} as child module '{name}' "
                "(an nn.Module or None expected)"
            )
        elif name in params or name in modules:
            (params if name in params else modules)[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        for table in ("_parameters", "_buffers", "_modules"):
            members = self.__dict__.get(table)
            if members is not None and name in members:
                return members[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` (or None, for an absent optional parameter such as a bias)."""
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register non-learnable state; persistent buffers are saved by `state_dict`."""
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        self._modules[name] = module

    # ---- traversal --------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named(self, table: str) -> Iterator[tuple[str, Tensor]]:
        seen = set()
        for prefix, module in self.named_modules():
            for name, t in getattr(module, table).items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return self._named("_parameters")

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        return self._named("_buffers")

    def buffers(self) -> Iterator[Tensor]:
        for _, b in self.named_buffers():
            yield b

    # ---- modes and gradients ----------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ---- calling ----------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        for hook in self._forward_pre_hooks.values():
            hook(self, args)
        out = self.forward(*args, **kwargs)
        for hook in self._forward_hooks.values():
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, inputs)` runs before each forward (weight_norm uses one)."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle] = hook
        return handle

    def register_forward_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, inputs, output)` runs after each forward and may return a replacement
        output; `handle.remove()` (or calling the handle) unregisters it."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle] = hook
        return handle

    # ---- state ------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Tensor]:
        state = {}
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[dot + name] = p
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent:
                    state[dot + name] = b
        return state

    def state_dict(self) -> OrderedDict[str, Tensor]:
        """Parameters and persistent buffers by dotted name (detached, sharing memory)."""
        return OrderedDict((k, t.detach()) for k, t in self._state_tensors().items())

    def load_state_dict(self, state_dict: Mapping, strict: bool = True) -> IncompatibleKeys:
        """Copy values (Tensors or NumPy arrays) into this module's parameters and buffers,
        keeping each one's dtype and device. With strict=True the keys must match exactly;
        shapes must always match, and each value must be numeric (booleans, integers, floats;
        complex only into complex). All or nothing: every value is checked and converted into
        a new array before the first is written, so a bad dict changes nothing."""
        own = self._state_tensors()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {
            key: _converted(key, state_dict[key], target)
            for key, target in own.items()
            if key in state_dict
        }
        for key, array in arrays.items():
            own[key].data[...] = array
        return IncompatibleKeys(missing, unexpected)

    # ---- dtype and device -------------------------------------------------------------
    def _apply(self, convert: Callable) -> Module:
        """Replace the array of every parameter and buffer by `convert(array)`, in place, so
        that optimizers holding these Parameters keep updating them (an optimizer's own state,
        such as momentum, is not moved: create or load the optimizer after moving the model)."""
        for module in self.modules():
            for table in (module._parameters, module._buffers):
                for t in table.values():
                    if t is not None:
                        t.data = convert(t.data)
                        if t.grad is not None:
                            t.grad = Tensor(convert(t.grad.data))
        return self

    def to(self, target) -> Module:
        """`.to("cuda")`, `.to("cpu")` or `.to(dtype)` for every parameter and buffer."""
        if isinstance(target, str):
            device = backend.check_device(target)
            return self._apply(lambda a: backend.to_device(a, device))
        dtype = np.dtype(target)
        return self._apply(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a)

    def double(self) -> Module:
        return self.to(np.float64)

    def float(self) -> Module:
        return self.to(np.float32)

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    # ---- printing ---------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [
            f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()
        ]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(lines) + "\n)" if lines else ")")
