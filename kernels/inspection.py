"""What Numba compiled for a kernel call (`inspect`), for a reader who wants to see the machine
code's shape without reading it:

    for report in tinynorm.kernels.inspect("normalize", (x, center, scale, shift)):
        print(report)

`tinynorm.kernels.inspect` runs `tinynorm.kernels.<name>(*example_args)` once on NumPy arrays,
noting each CPU kernel the call launched (the kernels' hook, `observing`), and `report` says for
each: its compiled
signatures, whether its loops were vectorized (the widest floating-point vector type in its
LLVM IR, e.g. `<8 x float>`: 8 lanes; and the widest registers its assembly uses), the threading
layer and thread count, and its on-disk cache. Numba keeps no IR for code loaded from its cache,
so the IR and assembly come from a fresh, uncached compilation of the same function with the
same options for the same argument types (a few seconds per kernel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numba
from numba.core.registry import CPUDispatcher

from . import cpu

REGISTERS = {"zmm": 512, "ymm": 256, "xmm": 128}


@dataclass
class KernelReport:
    """What `inspect` found for one kernel."""

    name: str  # the kernel, a function of tinynorm.kernels.cpu
    signature: str  # the argument types of the example call
    signatures: list[str]  # every signature compiled for it in this process
    parallel: bool
    fastmath: list[str]  # the fast-math flags it was compiled with
    vector_width: int  # the most lanes of a floating-point vector type in its IR; 1: scalar
    vector_types: list[str]  # the floating-point vector types in its IR, e.g. "<8 x float>"
    registers: str  # the widest vector registers in its assembly: "zmm", "ymm", "xmm" or ""
    threading_layer: str
    threads: int
    cache_index: str | None  # the index file of its on-disk cache (None: not cached)
    cache_hits: int  # signatures loaded from that cache in this process
    cache_misses: int  # signatures compiled because the cache had none

    def __str__(self) -> str:
        kind = "parallel" if self.parallel else "serial (on the calling thread)"
        flags = f", fastmath {' '.join(self.fastmath)}" if self.fastmath else ""
        vectors = ", ".join(self.vector_types) or "no vector types"
        bits = f"{self.registers} ({REGISTERS[self.registers]}-bit)" if self.registers else "none"
        vectorized = "yes" if self.vector_width > 1 else "no"
        cache = self.cache_index or "not cached"
        return "\n".join(
            [
                f"{self.name}: {kind}{flags}",
                f"  this call: {self.signature}",
                f"  compiled signatures in this process: {len(self.signatures)}",
                f"  vectorized: {vectorized}, {self.vector_width} lanes ({vectors});"
                f" widest registers: {bits}",
                f"  threads: {self.threads} on the {self.threading_layer} layer",
                f"  cache: {cache} ({self.cache_hits} hits, {self.cache_misses} misses)",
            ]
        )


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return "(not chosen yet)"


def _cache_index(dispatcher: CPUDispatcher) -> str | None:
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    path = getattr(cache_file, "_index_path", None)
    return None if path is None else str(path)


def report(name: str, args: tuple) -> KernelReport:
    """The report for kernel `name` of `cpu` called with `args` (see the module docstring)."""
    dispatcher = getattr(cpu, name)
    if not isinstance(dispatcher, CPUDispatcher):
        raise TypeError(
            f"cpu.{name} is a Python function that picks a kernel compiled per call's "
            "constants (see cpu.max_pool_kernels), not a Numba kernel to inspect"
        )
    signature = tuple(dispatcher.typeof_pyval(a) for a in args)
    options = {k: v for k, v in dispatcher.targetoptions.items() if k not in ("cache", "nopython")}
    fresh = numba.njit(**options)(dispatcher.py_func)
    folded = tuple(fresh.fold_argument_types(signature, {})[1])  # *args as one tuple type
    fresh.compile(folded)
    ir, asm = fresh.inspect_llvm(folded), fresh.inspect_asm(folded)
    types = sorted(
        set(re.findall(r"<(\d+) x (half|float|double)>", ir)), key=lambda t: (-int(t[0]), t[1])
    )
    used = set(re.findall(r"%(zmm|ymm|xmm)\d+", asm))
    fastmath = options.get("fastmath", False)
    return KernelReport(
        name=name,
        signature=f"({', '.join(map(str, signature))})",
        signatures=[f"({', '.join(map(str, s))})" for s in dispatcher.signatures],
        parallel=bool(options.get("parallel", False)),
        fastmath=sorted(fastmath) if isinstance(fastmath, set) else (["fast"] if fastmath else []),
        vector_width=max((int(n) for n, _ in types), default=1),
        vector_types=[f"<{n} x {t}>" for n, t in types],
        registers=max(used, key=REGISTERS.get, default=""),
        threading_layer=_threading_layer(),
        threads=numba.get_num_threads(),
        cache_index=_cache_index(dispatcher),
        cache_hits=sum(dispatcher.stats.cache_hits.values()),
        cache_misses=sum(dispatcher.stats.cache_misses.values()),
    )
