"""Training across processes, with `torch.distributed`'s names: MPI through mpi4py for arrays on
the CPU (`mpiexec -n 2 python -m mpi4py script.py`; `pip install 'tinynorm[distributed]'`).

    import tinynorm.distributed as dist
    dist.init_process_group()               # one rank without mpiexec: world size 1
    dist.all_reduce(t)                      # in place: the sum over the ranks

`init_process_group` also divides the node's cores among the ranks on it (Numba's threads; the
BLAS stays on one thread): two ranks each taking both cores of a 2-core machine run 20-30 times
slower than one thread each. Collectives use mpi4py's buffer API (no pickling): 1M float32
between two ranks take about 1 ms. NCCL for CuPy arrays is not here yet.
"""

from __future__ import annotations

import os

import numpy as np

from .tensor import Tensor

BACKENDS = ("mpi",)
OPS = ("sum", "max", "min")


class ProcessGroup:
    """The ranks of an MPI communicator and the array collectives the layers use (SyncBatchNorm
    gathers its statistics with `all_gather` and sums its gradients with `all_reduce`)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def all_reduce(self, array, op: str = "sum"):
        """A new contiguous array: `op` of `array` over the ranks, elementwise."""
        from mpi4py import MPI

        out = np.ascontiguousarray(array).copy()
        self.comm.Allreduce(
            MPI.IN_PLACE, out, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        )
        return out

    def all_gather(self, array):
        """Every rank's `array` (all of one shape), stacked: (world size, *shape)."""
        array = np.ascontiguousarray(array)
        out = np.empty((self.size, *array.shape), array.dtype)
        self.comm.Allgather(array, out)
        return out

    def broadcast(self, array, src: int = 0):
        """`array` overwritten, in place, by rank `src`'s."""
        self.comm.Bcast(array, root=src)
        return array

    def barrier(self) -> None:
        self.comm.Barrier()


_world: ProcessGroup | None = None


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:  # the package, or its MPI library
        raise RuntimeError(
            "the 'mpi' backend needs mpi4py and an MPI library: pip install "
            f"'tinynorm[distributed]' (mpi4py + mpich), or mpi4py on your system's MPI ({err})"
        ) from err
    return MPI


def init_process_group(backend: str | None = None) -> None:
    """Join the processes started by mpiexec (or be world size 1 without it) and give this
    rank its share of the node's cores."""
    global _world
    if _world is not None:
        raise RuntimeError("the default process group is already initialized")
    backend = backend or "mpi"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    MPI = _mpi()
    _world = ProcessGroup(MPI.COMM_WORLD)
    local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # ranks on this node
    from . import threads

    threads.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _group() -> ProcessGroup:
    if _world is None:
        raise RuntimeError(
            "Default process group has not been initialized, please make sure to call "
            "init_process_group."
        )
    return _world


def is_initialized() -> bool:
    return _world is not None


def group() -> ProcessGroup:
    """The default group of every rank (PyTorch's `group.WORLD`)."""
    return _group()


def get_rank() -> int:
    return _group().rank


def get_world_size() -> int:
    return _group().size


def _check(tensor: Tensor, op: str) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(tensor).__name__}")
    if tensor.device != "cpu":
        raise ValueError(f"{op}: the 'mpi' backend takes CPU tensors, got one on {tensor.device}")


def all_reduce(tensor: Tensor, op: str = "sum") -> None:
    """`tensor` ← `op` ("sum", "max", "min") of every rank's tensor, in place."""
    _check(tensor, "all_reduce")
    if op not in OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}: expected one of {OPS}")
    tensor.data[...] = _group().all_reduce(tensor.data, op)


def all_gather(tensor_list: list[Tensor], tensor: Tensor) -> None:
    """tensor_list[r] ← rank r's `tensor`, in place (the list holds world-size tensors)."""
    _check(tensor, "all_gather")
    world = _group()
    if len(tensor_list) != world.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)}, expected {world.size}")
    for t, value in zip(tensor_list, world.all_gather(tensor.data)):
        t.data[...] = value


def broadcast(tensor: Tensor, src: int = 0) -> None:
    """`tensor` ← rank `src`'s, in place."""
    _check(tensor, "broadcast")
    tensor.data[...] = _group().broadcast(np.ascontiguousarray(tensor.data), src)


def barrier() -> None:
    _group().barrier()


def destroy_process_group() -> None:
    """Leave the group (MPI itself stays up until the process ends, as mpi4py wants)."""
    global _world
    _world = None
