"""Where a training step's time goes, op by op and kernel by kernel (PyTorch's `torch.profiler`).

    with tinynorm.profiler.profile() as prof:
        loss = ops.cross_entropy(model(x), y)
        loss.backward()
        with tinynorm.profiler.record_function("optimizer.step"):
            optimizer.step()
    print(prof.table())                       # each op and pass, its kernels beneath it
    prof.export_chrome_trace("trace.json")    # open in ui.perfetto.dev or chrome://tracing

While the block runs, on every thread, it records one event per
- op: each `Function.forward` that `Function.apply` runs and each `Function.backward` that
  `backward()` runs (the engine's hook, `autograd.profiling`); with `memory=True` also the bytes
  the op left allocated (its result and what it saved) and its peak above where it started
  (tracemalloc, which NumPy reports its arrays to; everything runs slower meanwhile);
- kernel: each launch of a Numba CPU kernel (the kernels' hook, `kernels.observing`), under the op
  that launched it, with the bytes it moved: each array argument and result counted once, read
  or written, the least traffic the kernel needs. Its GB/s is set against the machine's copy
  bandwidth (`kernels.copy_bandwidth`). On a GPU no kernel is recorded and an op's time is the
  time to queue its work;
- range: a block named with `record_function`, timed whole and by itself (less the ops and
  ranges inside it).

Not recorded: the engine's own work between ops (making tensors, walking the graph, summing
gradients) and Python outside ops and ranges; the table's last lines give that rest of the
block's wall time.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from . import autograd, kernels
from .files import atomic_write

_FIELDS = ("calls", "seconds", "self_seconds", "bytes", "allocated", "peak")  # `_sums`' sums
SORT_KEYS = ("total", "calls", "per_call", "name", "allocated")


@dataclass(eq=False)
class Event:
    """One op pass, kernel launch or named range; seconds from `time.perf_counter`."""

    kind: str  # "op", "kernel" or "range"
    name: str  # the op's class, the kernel's or the range's name
    phase: str  # "forward" or "backward" for an op; "" otherwise
    parent: Event | None  # the op or range it ran inside, on its thread
    thread: int  # the thread's native id
    start: float
    end: float = math.nan
    inner: float = 0.0  # seconds of the ops and ranges that ran directly inside
    bytes: int = 0  # a kernel's: what it read and wrote
    allocated: int = 0  # an op's, with memory=True: bytes it left allocated
    peak: int = 0  # an op's, with memory=True: its highest allocation above its start

    @property
    def seconds(self) -> float:
        return self.end - self.start


_current: contextvars.ContextVar[Event | None] = contextvars.ContextVar("event", default=None)


def _arrays(values) -> Iterator[np.ndarray]:
    """The arrays among `values`, and inside the tuples among them."""
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, tuple):
            yield from _arrays(v)


def _moved(args: tuple, out: Any) -> int:
    """Bytes of the arrays among a kernel's arguments and results (tuples of arrays opened),
    each array counted once."""
    arrays = {id(a): a for a in _arrays((args, out))}
    return sum(a.nbytes for a in arrays.values())


class Profiler:
    """The events of one `profile()` block, and their sums per op, kernel and range."""

    def __init__(self, memory: bool = False) -> None:
        self.memory = memory
        self.events: list[Event] = []
        self.thread_names: dict[int, str] = {}
        self.copy_bandwidth = kernels.copy_bandwidth()  # bytes/s, measured before the block
        self.start = self.end = time.perf_counter()

    @contextlib.contextmanager
    def _recording(self, kind: str, name: str, phase: str = "") -> Iterator[Event]:
        """An event for the block, the innermost one of its thread while the block runs."""
        thread = threading.get_native_id()
        if thread not in self.thread_names:
            self.thread_names[thread] = threading.current_thread().name
        parent = _current.get()
        event = Event(kind, name, phase, parent, thread, time.perf_counter())
        token = _current.set(event)
        try:
            yield event
        finally:
            event.end = time.perf_counter()
            _current.reset(token)
            if parent is not None and kind != "kernel":
                parent.inner += event.seconds
            self.events.append(event)

    def call(self, op: str, phase: str, method: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """The engine's hook (`autograd.profiling`): `method(*args, **kwargs)` as an op event."""
        with self._recording("op", op, phase) as event:
            if not self.memory:
                return method(*args, **kwargs)
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            try:
                return method(*args, **kwargs)
            finally:
                now, peak = tracemalloc.get_traced_memory()
                event.allocated, event.peak = now - before, peak - before

    def kernel(self, name: str, run: Callable, args: tuple) -> Any:
        """The kernels' hook (`kernels.observing`): `run(*args)` as a kernel event."""
        with self._recording("kernel", name) as event:
            out = run(*args)
            event.bytes = _moved(args, out)
            return out

    @property
    def wall_seconds(self) -> float:
        """The block's wall time (so far, while it runs)."""
        return (self.end if _active is not self else time.perf_counter()) - self.start

    def _sums(self, kind: str, key: Callable[[Event], tuple]) -> dict[tuple, dict[str, Any]]:
        """Per key of the events of `kind`: calls, seconds, self_seconds, bytes, allocated, peak."""
        sums: dict[tuple, dict[str, Any]] = {}
        for e in self.events:
            if e.kind == kind:
                row = sums.setdefault(key(e), dict.fromkeys(_FIELDS, 0))
                row["calls"] += 1
                row["seconds"] += e.seconds
                row["self_seconds"] += e.seconds - e.inner
                row["bytes"] += e.bytes
                row["allocated"] += e.allocated
                row["peak"] = max(row["peak"], e.peak)
        return sums

    @property
    def calls(self) -> dict[tuple[str, str], int]:
        """Calls per (op, pass)."""
        return {(r["op"], r["pass"]): r["calls"] for r in self.rows()}

    @property
    def seconds(self) -> dict[tuple[str, str], float]:
        """Seconds per (op, pass)."""
        return {(r["op"], r["pass"]): r["seconds"] for r in self.rows()}

    def rows(self, sort_by: str = "total") -> list[dict[str, Any]]:
        """One dict per (op, pass): op, pass, calls, seconds, allocated and peak (bytes, with
        memory=True), and kernels: one dict (kernel, calls, seconds, bytes, gbps) per kernel
        the op launched, the most time first. Kernels launched outside any op come under the
        op "(no op)". Sorted by `sort_by`, one of SORT_KEYS (the largest first)."""
        if sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {SORT_KEYS}, got {sort_by!r}")
        ops = self._sums("op", lambda e: (e.name, e.phase))
        kernels = self._sums("kernel", _kernel_key)
        for op, phase, _ in kernels:  # kernels outside any op: a row of no calls
            ops.setdefault((op, phase), dict.fromkeys(_FIELDS, 0))
        rows = {key: {"op": key[0], "pass": key[1], **r, "kernels": []} for key, r in ops.items()}
        for (op, phase, name), r in kernels.items():
            row = rows[op, phase]
            gbps = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] > 0 else 0.0
            row["kernels"].append({"kernel": name, **r, "gbps": gbps})
        for row in rows.values():
            row["kernels"].sort(key=lambda k: k["seconds"], reverse=True)
        order = {
            "total": lambda r: -r["seconds"],
            "calls": lambda r: -r["calls"],
            "per_call": lambda r: -r["seconds"] / max(r["calls"], 1),
            "name": lambda r: (r["op"], r["pass"]),
            "allocated": lambda r: -r["allocated"],
        }[sort_by]
        return sorted(rows.values(), key=order)

    def ranges(self) -> list[dict[str, Any]]:
        """One dict per `record_function` name: name, calls, seconds and self_seconds (less
        the ops and ranges directly inside), the most time first."""
        rows = [{"name": k[0], **r} for k, r in self._sums("range", lambda e: (e.name,)).items()]
        return sorted(rows, key=lambda r: r["seconds"], reverse=True)

    def table(self, sort_by: str = "total") -> str:
        """The ops (`rows`) with their kernels beneath them, the ranges, and where the rest of
        the block's wall time went, as aligned text."""
        copy = self.copy_bandwidth / 1e9
        head = f"{'op / kernel':<28} {'pass':<8} {'calls':>6} {'total ms':>9} {'ms/call':>8}"
        head += f" {'MB moved':>9} {'GB/s':>6} {'% copy':>6}"
        if self.memory:
            head += f" {'alloc MB':>9} {'peak MB':>8}"
        lines = [head]
        for r in self.rows(sort_by):
            ms = 1e3 * r["seconds"]
            line = f"{r['op']:<28} {r['pass']:<8} {r['calls']:>6} {ms:>9.3f}"
            line += f" {ms / r['calls']:>8.4f}" if r["calls"] else f" {'':>8}"
            if self.memory:
                line += (
                    f" {'':>9} {'':>6} {'':>6} {r['allocated'] / 1e6:>9.3f} {r['peak'] / 1e6:>8.3f}"
                )
            lines.append(line.rstrip())
            for k in r["kernels"]:
                ms = 1e3 * k["seconds"]
                lines.append(
                    f"  {'└ ' + k['kernel']:<26} {'':<8} {k['calls']:>6} {ms:>9.3f}"
                    f" {ms / k['calls']:>8.4f} {k['bytes'] / 1e6:>9.3f} {k['gbps']:>6.2f}"
                    f" {100 * k['gbps'] / copy:>6.1f}"
                )
        ranges = self.ranges()
        if ranges:
            lines += [
                "",
                f"{'range (record_function)':<37} {'calls':>6} {'total ms':>9} {'self ms':>8}",
            ]
            for r in ranges:
                lines.append(
                    f"{r['name']:<37} {r['calls']:>6} {1e3 * r['seconds']:>9.3f}"
                    f" {1e3 * r['self_seconds']:>8.3f}"
                )
        wall = self.wall_seconds
        in_ops = sum(
            e.seconds for e in self.events if e.kind == "op" and _op_owner(e.parent) is None
        )
        in_ranges = sum(r["self_seconds"] for r in ranges)
        rest = wall - in_ops - in_ranges
        lines += [
            "",
            f"wall time {1e3 * wall:.3f} ms: ops {1e3 * in_ops:.3f} ms ({_percent(in_ops, wall)}),"
            f" ranges' own code {1e3 * in_ranges:.3f} ms ({_percent(in_ranges, wall)}),"
            f" the rest (engine, Python between ops) {1e3 * rest:.3f} ms ({_percent(rest, wall)})",
            f"copy bandwidth of this machine: {copy:.2f} GB/s (read + written, a parallel copy"
            " on the kernels' threads); MB moved: each array a kernel read or wrote, once",
        ]
        return "\n".join(lines)

    __str__ = table

    def export_chrome_trace(self, path: str | PathLike[str]) -> None:
        """Write the events as a Chrome trace (JSON, the Trace Event Format's complete "X"
        events, microseconds from the block's start) for ui.perfetto.dev or chrome://tracing;
        written atomically."""
        pid = os.getpid()
        trace = [
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
            for tid, name in self.thread_names.items()
        ]
        for e in sorted(self.events, key=lambda e: e.start):
            args: dict[str, Any] = {}
            if e.kind == "kernel":
                args = {"bytes": e.bytes, "GB/s": round(e.bytes / max(e.seconds, 1e-12) / 1e9, 3)}
            elif e.kind == "op" and self.memory:
                args = {"allocated bytes": e.allocated, "peak bytes": e.peak}
            trace.append(
                {
                    "name": f"{e.name} {e.phase}".strip(),
                    "cat": e.kind,
                    "ph": "X",
                    "ts": round(1e6 * (e.start - self.start), 3),
                    "dur": round(1e6 * e.seconds, 3),
                    "pid": pid,
                    "tid": e.thread,
                    "args": args,
                }
            )
        data = {"traceEvents": trace, "displayTimeUnit": "ms"}
        with atomic_write(path) as f:
            f.write(json.dumps(data).encode())


def _op_owner(event: Event | None) -> Event | None:
    """The nearest op among `event` and its parents, or None."""
    while event is not None and event.kind != "op":
        event = event.parent
    return event


def _kernel_key(event: Event) -> tuple[str, str, str]:
    """(op, pass, kernel) of a kernel launch: the op it ran under, or "(no op)"."""
    op = _op_owner(event.parent)
    return (op.name, op.phase, event.name) if op is not None else ("(no op)", "", event.name)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


_active: Profiler | None = None  # the profiler of the open block


@contextlib.contextmanager
def profile(memory: bool = False) -> Iterator[Profiler]:
    """Record every op, kernel and `record_function` range while the block runs (see the
    module's docstring); `memory=True` adds each op's allocations (tracemalloc). Blocks do not
    nest: entering one inside another raises RuntimeError (the outer one goes on). The block
    closes on an exception too; afterwards the `Profiler` keeps what it recorded."""
    global _active
    profiler = Profiler(memory)
    with autograd.profiling(profiler), kernels.observing(profiler.kernel):
        tracing = memory and not tracemalloc.is_tracing()
        if tracing:
            tracemalloc.start()
        _active = profiler
        profiler.start = time.perf_counter()
        try:
            yield profiler
        finally:
            profiler.end = time.perf_counter()
            _active = None
            if tracing:
                tracemalloc.stop()


@contextlib.contextmanager
def record_function(name: str) -> Iterator[None]:
    """Time the block as a range called `name` in the open `profile()` (as
    `torch.profiler.record_function`); nothing when no profile is open."""
    profiler = _active
    if profiler is None:
        yield
        return
    with profiler._recording("range", name):
        yield
