"""Training across processes, with `torch.distributed`'s names: MPI through mpi4py for arrays on
the CPU (`mpiexec -n 2 python -m mpi4py script.py`; `pip install 'tinynorm[distributed]'`).

    import tinynorm.distributed as dist
    dist.init_process_group()               # one rank without mpiexec: world size 1
    dist.all_reduce(t)                      # in place: the sum over the ranks

`init_process_group` also divides the node's cores among the ranks on it (Numba's threads; the
BLAS stays on one thread): two ranks each taking both cores of a 2-core machine run 20-30 times
slower than one thread each. Collectives use mpi4py's buffer API (no pickling): 1M float32
between two ranks take about 2 ms (bench/RESULTS.md).

`init_process_group("nccl")` runs the collectives on CuPy arrays through NCCL
(`cupy.cuda.nccl`; MPI only starts the ranks and hands out NCCL's id), each rank on the GPU of
its local rank; NumPy arrays (counts, losses) still go through MPI. Not yet run on a GPU.
"""

from __future__ import annotations

import os

import numpy as np

from .backend import get_array_module
from .tensor import Tensor

BACKENDS = ("mpi", "nccl")
OPS = ("sum", "max", "min")


class ProcessGroup:
    """The ranks of an MPI communicator and the array collectives the layers use (SyncBatchNorm
    gathers its statistics with `all_gather` and sums its gradients with `all_reduce`)."""

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def all_reduce(self, array, op: str = "sum"):
        """A new contiguous array: `op` of `array` over the ranks, elementwise."""
        return self.all_reduce_(get_array_module(array).ascontiguousarray(array).copy(), op)

    def all_reduce_(self, array, op: str = "sum"):
        """`array` (contiguous) overwritten by `op` of it over the ranks, elementwise: no copy."""
        from mpi4py import MPI

        self.comm.Allreduce(
            MPI.IN_PLACE, array, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        )
        return array

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


class NcclGroup(ProcessGroup):
    """The same collectives on CuPy arrays through NCCL, on the current CUDA stream; NumPy
    arrays go through MPI as in `ProcessGroup`. `comm` (MPI) starts it: rank 0 draws NCCL's
    unique id and broadcasts it."""

    def __init__(self, comm):
        super().__init__(comm)
        from cupy.cuda import nccl

        uid = np.zeros(NCCL_ID_BYTES, np.int8)
        if self.rank == 0:
            uid[:] = nccl.get_unique_id()
        comm.Bcast(uid, root=0)
        self.nccl = nccl
        self.nccl_comm = nccl.NcclCommunicator(self.size, tuple(int(b) for b in uid), self.rank)

    def all_reduce_(self, array, op: str = "sum"):
        if isinstance(array, np.ndarray):
            return super().all_reduce_(array, op)
        nccl, ptr = self.nccl, array.data.ptr
        ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}
        dtype = nccl_dtype(nccl, array.dtype)
        self.nccl_comm.allReduce(ptr, ptr, array.size, dtype, ops[op], _stream())
        return array

    def all_gather(self, array):
        if isinstance(array, np.ndarray):
            return super().all_gather(array)
        xp = get_array_module(array)
        array = xp.ascontiguousarray(array)
        out = xp.empty((self.size, *array.shape), array.dtype)
        dtype = nccl_dtype(self.nccl, array.dtype)
        self.nccl_comm.allGather(array.data.ptr, out.data.ptr, array.size, dtype, _stream())
        return out

    def broadcast(self, array, src: int = 0):
        if isinstance(array, np.ndarray):
            return super().broadcast(array, src)
        dtype = nccl_dtype(self.nccl, array.dtype)
        self.nccl_comm.bcast(array.data.ptr, array.size, dtype, src, _stream())
        return array


NCCL_ID_BYTES = 128
NCCL_TYPES = ("int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32")
NCCL_TYPES += ("float64",)


def nccl_dtype(nccl, dtype) -> int:
    """NCCL's code for a NumPy dtype (`nccl`: CuPy's `cupy.cuda.nccl` module)."""
    name = np.dtype(dtype).name
    if name not in NCCL_TYPES:
        raise TypeError(f"NCCL has no type for {name}: expected one of {NCCL_TYPES}")
    return getattr(nccl, f"NCCL_{name.upper()}")


def local_device(local_rank: int, devices: int) -> int:
    """The GPU of the rank with this index among its node's ranks: one GPU per rank, in order
    (ranks beyond the GPUs share them round-robin)."""
    if devices < 1:
        raise RuntimeError("the 'nccl' backend needs a CUDA GPU; none is visible")
    return local_rank % devices


def _stream() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


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
    rank its share of the node's cores; "nccl" also gives it the GPU of its local rank."""
    global _world
    if _world is not None:
        raise RuntimeError("the default process group is already initialized")
    backend = backend or "mpi"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
    cupy = backend_module() if backend == "nccl" else None
    MPI = _mpi()
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
    from . import threads

    threads.set_num_threads(max(1, (os.cpu_count() or 1) // node.Get_size()))
    if cupy is not None:
        device = local_device(node.Get_rank(), cupy.cuda.runtime.getDeviceCount())
        cupy.cuda.Device(device).use()
        _world = NcclGroup(MPI.COMM_WORLD)
    else:
        _world = ProcessGroup(MPI.COMM_WORLD)


def backend_module():
    """CuPy, for the 'nccl' backend, or a clear error."""
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"the 'nccl' backend needs CuPy with NCCL: pip install 'tinynorm[gpu]' ({err})"
        ) from err
    return cupy


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
    if tensor.device != "cpu" and not isinstance(_group(), NcclGroup):
        raise ValueError(f"{op}: the 'mpi' backend takes CPU tensors, got one on {tensor.device}")


def all_reduce(tensor: Tensor, op: str = "sum") -> None:
    """`tensor` ← `op` ("sum", "max", "min") of every rank's tensor, in place."""
    _check(tensor, "all_reduce")
    if op not in OPS:
        raise ValueError(f"all_reduce: unknown op {op!r}: expected one of {OPS}")
    if tensor.data.flags.c_contiguous:
        _group().all_reduce_(tensor.data, op)
    else:
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
