"""Who runs on the CPU's cores: tinynorm's Numba kernels, with the BLAS on one thread.

On a few cores, two thread pools must not take turns. After every matrix product OpenBLAS's
idle workers spin for about 0.1 s, stealing the cores from the Numba kernel that runs next: a
training step measured 6-10× slower in a script that imported NumPy before tinynorm. So
tinynorm gives the cores to Numba (`set_num_threads`, as `torch.set_num_threads`) and keeps the
BLAS that NumPy loaded (OpenBLAS, MKL, BLIS) on one thread, set at run time through
threadpoolctl: it holds whatever the script imported first, and a matrix product run on the
calling thread leaves no worker spinning.

Work that is mostly matrix products (the convolution) gets its two cores another way:
`parallel_map` gives each of `get_num_threads()` Python threads a share of the batch, and each
runs serial Numba kernels compiled without the GIL and one-thread BLAS calls (which release it).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import pairwise
from typing import TypeVar

import numba
from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")
_workers: ThreadPoolExecutor | None = None


def set_num_threads(n: int) -> None:
    """Run tinynorm's kernels on `n` threads (1 to Numba's pool size: the cores, or
    $NUMBA_NUM_THREADS), in the calling thread's work; the BLAS stays on one thread."""
    most = numba.config.NUMBA_NUM_THREADS
    if type(n) is not int or not 1 <= n <= most:
        raise ValueError(f"set_num_threads: expected an int from 1 to {most}, got {n!r}")
    numba.set_num_threads(n)
    keep_blas_on_one_thread()


def get_num_threads() -> int:
    """The number of threads tinynorm's kernels run on (Numba's, for the calling thread)."""
    return numba.get_num_threads()


def keep_blas_on_one_thread() -> None:
    """Limit every BLAS library loaded so far to one thread (called on import, and again by
    `set_num_threads` for libraries loaded since)."""
    threadpool_limits(limits=1, user_api="blas")


def split(count: int, parts: int) -> list[slice]:
    """range(count) cut into at most `parts` contiguous slices of near-equal length."""
    parts = max(1, min(parts, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    return [slice(a, b) for a, b in pairwise(bounds)]


def _forget_workers() -> None:
    """In a forked child the pool's threads do not exist: the next `parallel_map` makes one."""
    global _workers
    _workers = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def parallel_map(task: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[task(item) for item in items], the first on the calling thread and the others on a
    pool of worker threads. For tasks that spend their time without the GIL (`nogil` Numba
    kernels, NumPy's BLAS calls). Each task sees the caller's context variables (the op a
    profiler is timing). Returns once every task has ended; a task's exception is raised here
    (the calling thread's first)."""
    global _workers
    if len(items) <= 1:
        return [task(item) for item in items]
    if _workers is None:
        _workers = ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, "tinynorm")
    futures = [_workers.submit(contextvars.copy_context().run, task, item) for item in items[1:]]
    try:
        first = task(items[0])
    finally:
        wait(futures)  # the workers may be writing into the caller's arrays
    return [first, *(f.result() for f in futures)]
