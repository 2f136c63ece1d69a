"""tinynorm owns the CPU's threads at run time, whatever the script imported first."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numba
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import tinynorm as tn
from tinynorm import threads

NUMPY_FIRST = """
import json, numpy
from threadpoolctl import threadpool_info
blas = lambda: sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
before = blas()
import tinynorm
print(json.dumps({"before": before, "after": blas()}))
"""


def test_blas_is_on_one_thread_even_when_numpy_was_imported_first():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", NUMPY_FIRST], capture_output=True, text=True, env=env, check=True
    )
    threads = json.loads(done.stdout)
    assert threads["before"], "NumPy's BLAS was not found"
    assert threads["after"] == [1]
    if os.cpu_count() > 1:
        assert max(threads["before"]) > 1  # so the import did change something


def test_set_num_threads_sets_numba_and_puts_blas_back_on_one_thread():
    most = numba.config.NUMBA_NUM_THREADS
    try:
        threadpool_limits(limits=2, user_api="blas")  # as a library loaded later might
        tn.set_num_threads(1)
        assert tn.get_num_threads() == 1
        assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {1}
        tn.set_num_threads(most)
        assert tn.get_num_threads() == most
    finally:
        tn.set_num_threads(most)


@pytest.mark.parametrize("bad", [0, -1, 2.0, "2", True, 10_000])
def test_set_num_threads_refuses_what_is_not_a_thread_count(bad):
    with pytest.raises(ValueError, match=r"set_num_threads: expected an int from 1 to \d+"):
        tn.set_num_threads(bad)


@pytest.mark.parametrize(("count", "parts"), [(5, 2), (2, 4), (7, 3), (1, 1), (0, 2)])
def test_split_cuts_a_range_into_near_equal_slices(count, parts):
    slices = threads.split(count, parts)
    assert [i for s in slices for i in range(count)[s]] == list(range(count))
    lengths = [s.stop - s.start for s in slices]
    assert len(slices) == max(1, min(parts, count)) and max(lengths) - min(lengths) <= 1


def test_parallel_map_runs_every_task_on_threads_and_keeps_the_order():
    names = threads.parallel_map(lambda i: (i, threading.current_thread().name), range(4))
    assert [i for i, _ in names] == [0, 1, 2, 3]
    assert names[0][1] == threading.current_thread().name  # the first runs on the caller
    assert all(name.startswith("tinynorm") for _, name in names[1:])


def test_parallel_map_raises_a_task_error_after_every_task_ended():
    ended = []

    def task(i):
        time.sleep(0.05 * i)
        ended.append(i)
        if i == 1:
            raise ArithmeticError("task 1 failed")
        return i

    with pytest.raises(ArithmeticError, match="task 1 failed"):
        threads.parallel_map(task, range(3))
    assert sorted(ended) == [0, 1, 2]


FAULTS = """
import resource, sys
import numpy as np
if sys.argv[1] == "tinynorm":
    import tinynorm
def touch():  # like a training step: four 8 MB arrays alive at once, then all freed
    return [np.ones(8 << 20, np.uint8) for _ in range(4)]
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_serves_the_next_allocation_without_page_faults():
    """After `import tinynorm`, the memory of freed arrays serves the next ones: no page faults;
    without it (plain NumPy), glibc gives it back to the OS and each round faults again."""
    faults = {
        who: int(
            subprocess.run(
                [sys.executable, "-c", FAULTS, who], capture_output=True, text=True, check=True
            ).stdout
        )
        for who in ("numpy", "tinynorm")
    }
    assert faults["tinynorm"] < 100
    assert faults["numpy"] > 5 * 2000  # of the 5 · 4 · 2,048 pages touched
    assert tn.memory.keep_freed_memory()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_parallel_map_works_in_a_forked_child():
    """A child forked after the pool started gets a pool of its own (the parent's threads are
    not there)."""
    assert threads.parallel_map(lambda i: i, range(2)) == [0, 1]
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the map completes (killed after 30 s if it hangs)
        signal.alarm(30)
        os._exit(0 if threads.parallel_map(lambda i: i * 2, range(3)) == [0, 2, 4] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
