"""What every benchmark script shares: thread counts, timing, the copy reference, the machine,
and the output (a Markdown table and a JSON file).

A script parses its arguments, calls `set_threads` and only then imports NumPy, Numba or
PyTorch, since the thread counts of OpenBLAS and OpenMP are read once, when they load:

    import common

    parser = argparse.ArgumentParser(description="...")
    common.add_common_arguments(parser, repeat=20)
    ARGS = parser.parse_args()
    common.set_threads(ARGS.threads)

    import numpy as np  # noqa: E402

    torch = common.import_torch(ARGS.threads, enabled=not ARGS.no_torch)
    cupy = common.import_cupy()

For that reason this module itself imports nothing beyond the standard library at the top; the
functions that need NumPy, Numba, PyTorch or CuPy import them when called.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

THREAD_VARIABLES = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def add_common_arguments(parser: argparse.ArgumentParser, repeat: int) -> None:
    """Add the options every benchmark takes: --threads, --repeat (default `repeat`), --quick,
    --json PATH and --no-torch."""
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    parser.add_argument(
        "--repeat", type=int, default=repeat, help="timed runs per measurement (median)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (smoke test)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument(
        "--no-torch", action="store_true", help="leave PyTorch out even when it is installed"
    )


def set_threads(threads: int) -> None:
    """Give Numba, OpenMP, MKL and OpenBLAS `threads` threads each, then import tinynorm.

    Must run before NumPy (and so OpenBLAS) is first imported. Importing tinynorm then puts
    NumPy's BLAS on one thread (tinynorm/threads.py), as in every tinynorm program. PyTorch's
    count is set by `import_torch`.
    """
    if "numpy" in sys.modules:
        raise RuntimeError("set_threads must run before NumPy is imported")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import tinynorm  # noqa: F401  (loads NumPy, then puts its BLAS on one thread)


def import_torch(threads: int, enabled: bool = True) -> ModuleType | None:
    """PyTorch on `threads` intra-op threads, or None when it is not installed or not
    `enabled` (it is only ever a point of comparison, never a dependency)."""
    if not enabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def import_cupy() -> ModuleType | None:
    """CuPy when it is installed and a CUDA GPU is usable, else None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # ImportError, or CuPy's CUDARuntimeError without a driver
        pass
    return None


def median_time(
    fn: Callable[[], Any], repeat: int, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> float:
    """The median wall time of `fn()` in seconds over `repeat` runs, after `warmup` untimed
    runs (compilation, caches, allocator). `sync`, when given, runs after each call inside the
    timed span: a device synchronize for work queued on a GPU."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@functools.cache
def _parallel_copy() -> Callable:
    """A Numba `prange` copy src -> dst of two flat arrays (compiled on first use)."""
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def parallel_copy(src, dst):
        for i in prange(src.size):
            dst[i] = src[i]

    return parallel_copy


def copy_bandwidth(array: Any, repeat: int) -> float:
    """GB/s of a parallel copy of an array like `array` (its bytes read + its bytes written):
    a Numba `prange` loop for a NumPy array, `cupy.copyto` for a CuPy array — the bandwidth
    that the kernels' figures are compared with."""
    if type(array).__module__.startswith("cupy"):
        import cupy

        src, dst = array.reshape(-1), cupy.empty(array.size, array.dtype)
        seconds = median_time(
            lambda: cupy.copyto(dst, src), repeat, sync=cupy.cuda.Device().synchronize
        )
    else:
        import numpy as np

        src, dst = array.reshape(-1), np.empty(array.size, array.dtype)
        copy = _parallel_copy()
        seconds = median_time(lambda: copy(src, dst), repeat)
    return 2 * array.nbytes / seconds / 1e9


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        return None
    return round(kib / 2**20, 1)


def _version(module: str) -> str | None:
    """The version of `module` if this run imported it (what was measured), else None."""
    loaded = sys.modules.get(module)
    return getattr(loaded, "__version__", None) if loaded else None


def _blas() -> str | None:
    import numpy as np

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):  # NumPy < 1.26 has no dict form
        return None
    return f"{blas['name']} {blas['version']}"


def _gpu() -> str | None:
    if "cupy" not in sys.modules:
        return None
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else name


def machine(threads: int) -> dict:
    """The machine and software of this run: CPU model, cores (all and usable by this
    process), memory, the thread count given to every library, the GPU if CuPy was imported,
    and the versions of Python, NumPy, its BLAS, Numba, tinynorm, and PyTorch and CuPy when
    this run imported them (None otherwise)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "threads": threads,
        "gpu": _gpu(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "blas": _blas(),
        "numba": _version("numba"),
        "tinynorm": _version("tinynorm"),
        "torch": _version("torch"),
        "cupy": _version("cupy"),
        "date": datetime.date.today().isoformat(),
    }


def describe(info: dict) -> str:
    """`machine()`'s dictionary as one line for the top of a printed table."""
    libraries = ", ".join(
        f"{name} {info[name]}"
        for name in ("numpy", "numba", "torch", "cupy")
        if info.get(name) is not None
    )
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB{gpu}; "
        f"{info['threads']} threads; Python {info['python']}, {libraries}, {info['blas']}"
    )


def cell(value: float | None, spec: str = ".2f") -> str:
    """`value` formatted with `spec`, or "—" for a missing figure."""
    return "—" if value is None else format(value, spec)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table of string cells; the first `left` columns are aligned left, the rest
    (the figures) right."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def write_json(path: str, info: dict, rows: list[dict], **settings: Any) -> None:
    """Write {"machine": info (from `machine()`), "settings": the options of the run, "rows"}
    to `path`."""
    with open(path, "w") as f:
        json.dump({"machine": info, "settings": settings, "rows": rows}, f, indent=1)
        f.write("\n")


def run_in_process(python: str, script: str, spec: dict, path: str | None = None) -> dict | None:
    """Run `script --child SPEC` (the spec as JSON) in a fresh `python` process and return the
    JSON object it prints last; None when it exits with 3 (its framework is not installed).
    `path`: a folder put first on the child's import path (another installed tinynorm)."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [*filter(None, [path]), here, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # so the child finds `common`
    done = subprocess.run(
        [python, script, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{spec.get('framework')} process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def child_main(args: Any, child: Callable[[dict], dict]) -> int:
    """The `--child SPEC` side of `run_in_process`: print `child(spec)` as JSON; exit 3 when
    the framework it imports is not installed."""
    try:
        result = child(json.loads(args.child))
    except ModuleNotFoundError as error:
        if error.name in ("torch", "tinynorm"):
            print(f"{error.name} is not installed", file=sys.stderr)
            return 3
        raise
    print(json.dumps(result))
    return 0
