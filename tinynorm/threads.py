"""Who runs on the CPU's cores: tinynorm's Numba kernels, with the BLAS on one thread.

On a few cores, two thread pools must not take turns. After every matrix product OpenBLAS's
idle workers spin for about 0.1 s, stealing the cores from the Numba kernel that runs next: a
training step measured 6-10× slower in a script that imported NumPy before tinynorm. So
tinynorm gives the cores to Numba (`set_num_threads`, as `torch.set_num_threads`) and keeps the
BLAS that NumPy loaded (OpenBLAS, MKL, BLIS) on one thread, set at run time through
threadpoolctl: it holds whatever the script imported first, and a matrix product run on the
calling thread leaves no worker spinning.
"""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits


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
