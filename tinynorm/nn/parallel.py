"""Data-parallel training across processes: `DistributedDataParallel`, PyTorch's name.

Every rank holds the whole model and runs it on its own share of the global batch (see
`tinynorm.data.DistributedSampler`); after `loss.backward()` each parameter's gradient is the
mean over the ranks, g = (1/p)·Σ_r g_r, so one optimizer step moves every replica alike: for a
loss that is a mean over the local batch and equal local batches, exactly the step of one
process on the global batch (with SyncBatchNorm where the model has batch norm).

The gradients travel in buckets: the parameters, in reverse registration order (the order the
backward pass finishes them), grouped into runs of one dtype of at most `bucket_cap_mb`; a
bucket is flattened into one array and all-reduced in one collective as soon as its last
gradient has been accumulated (a `register_post_accumulate_grad_hook` per parameter). Buckets
are reduced in the same order on every rank, so the collectives match up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .. import distributed
from ..backend import get_array_module
from ..tensor import Tensor
from .module import Module, Parameter


def broadcast_coalesced(group, tensors: list[Tensor], src: int = 0) -> None:
    """Overwrite `tensors` with rank `src`'s, in place: one broadcast per dtype."""
    for dtype in dict.fromkeys(t.dtype for t in tensors):  # in order: the same on every rank
        same = [t for t in tensors if t.dtype == dtype]
        xp = get_array_module(same[0].data)
        flat = group.broadcast(xp.concatenate([t.data.ravel() for t in same]), src)
        for t, part in zip(same, _split(flat, [t.data for t in same])):
            t.data[...] = part


def _split(flat, like: list) -> Iterator:
    """`flat` cut into arrays shaped like those of `like`, in order."""
    start = 0
    for a in like:
        yield flat[start : start + a.size].reshape(a.shape)
        start += a.size


def make_buckets(params: list[Parameter], cap_bytes: int) -> list[list[Parameter]]:
    """Consecutive runs of `params` of one dtype and at most `cap_bytes` (a parameter larger
    than the cap gets a bucket of its own)."""
    buckets: list[list[Parameter]] = []
    size = 0
    for p in params:
        if not buckets or p.dtype != buckets[-1][0].dtype or size + p.data.nbytes > cap_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.data.nbytes
    return buckets


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training over `process_group` (the default group):

        dist.init_process_group()
        model = DistributedDataParallel(model)      # rank 0's parameters and buffers everywhere
        loss_fn(model(x_local), y_local).backward() # every .grad: the mean over the ranks

    At construction the parameters and buffers are broadcast from rank 0. With
    `broadcast_buffers`, each training forward broadcasts rank 0's buffers again (running
    estimates of unsynced batch norms, as PyTorch does). `no_sync()` accumulates local
    gradients without reducing them; the first backward after it reduces the sum.
    Every parameter that requires grad must get a gradient in each backward pass; one that does
    not leaves its bucket unreduced, and the next forward says which.
    """

    def __init__(
        self,
        module: Module,
        process_group=None,
        broadcast_buffers: bool = True,
        bucket_cap_mb: float = 25.0,
    ):
        super().__init__()
        self.module = module
        self.process_group = process_group or distributed.group()
        self.broadcast_buffers = broadcast_buffers
        state = [*module.parameters(), *module.buffers()]
        if state:
            broadcast_coalesced(self.process_group, state)
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = make_buckets(params[::-1], int(bucket_cap_mb * 2**20))
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self._sync = True
        self._start_iteration()
        for p in params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        if self._ready:  # a backward pass reduced some buckets, or none, but not all
            missing = [
                name
                for name, p in self.module.named_parameters()
                if id(p) in self._bucket_of and id(p) not in self._ready
            ]
            raise RuntimeError(
                "DistributedDataParallel: the previous backward pass did not reduce every "
                "gradient: these parameters got none (not used to compute the loss): "
                f"{missing}"
            )
        if self.broadcast_buffers and self.training:
            buffers = list(self.module.buffers())
            if buffers:
                broadcast_coalesced(self.process_group, buffers)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside the block accumulate local gradients without reducing them."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _start_iteration(self) -> None:
        self._ready: set[int] = set()
        self._waiting = [len(bucket) for bucket in self.buckets]
        self._next = 0  # the first bucket not yet reduced

    def _grad_ready(self, param: Parameter) -> None:
        """A parameter's gradient is in: reduce every complete bucket, in order."""
        if not self._sync or id(param) in self._ready:
            return
        self._ready.add(id(param))
        self._waiting[self._bucket_of[id(param)]] -= 1
        while self._next < len(self.buckets) and not self._waiting[self._next]:
            self._reduce(self.buckets[self._next])
            self._next += 1
        if self._next == len(self.buckets):
            self._start_iteration()

    def _reduce(self, bucket: list[Parameter]) -> None:
        """Each gradient of `bucket` ← its mean over the ranks, in one all-reduce."""
        grads = [p.grad.data for p in bucket]
        flat = get_array_module(grads[0]).concatenate([g.ravel() for g in grads])
        flat = self.process_group.all_reduce_(flat)
        flat /= self.process_group.size
        for p, mean in zip(bucket, _split(flat, grads)):
            p.grad = Tensor(mean)

    def extra_repr(self) -> str:
        sizes = [sum(p.numel() for p in bucket) for bucket in self.buckets]
        return f"world_size={self.process_group.size}, buckets={sizes}"
