"""DistributedSampler: each rank's share of a dataset, with `torch.utils.data.distributed`'s rules.

sampler = DistributedSampler(dataset)          # num_replicas, rank from tinynorm.distributed
loader = DataLoader(dataset, batch_size=64, sampler=sampler)
for epoch in range(epochs):
    sampler.set_epoch(epoch)                   # else every epoch has the same order
    for x, y in loader: ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np

from .. import distributed as dist


class DistributedSampler:
    """The example indices of one rank (`rank` of `num_replicas`), PyTorch's semantics.

    - `num_samples` (= `len(sampler)`) is ceil(n / num_replicas) for n examples; with
      `drop_last` and n not divisible by num_replicas it is ceil((n - num_replicas) /
      num_replicas), i.e. n // num_replicas. `total_size` = num_samples * num_replicas.
    - Each epoch the order is a permutation of 0..n-1 from `np.random.default_rng(seed + epoch)`
      when `shuffle` (the same on every rank, since all use the same seed and epoch; not
      PyTorch's random stream), else 0, 1, ..., n-1. Without `drop_last` it is padded to
      total_size by repeating it from its start (as many times as needed); with `drop_last` it
      is cut to total_size. This rank takes `order[rank:total_size:num_replicas]`, so the ranks'
      shares are disjoint (up to the padding) and together cover every example.
    - Call `set_epoch(epoch)` at the start of every epoch, before iterating, as in PyTorch:
      without it every epoch has the same order.

    `dataset` is anything with `len()`, DataLoader's pair `(inputs, labels)` (its length is that
    of the labels), or the number of examples. `num_replicas` and `rank`
    default to `tinynorm.distributed.get_world_size()` and `get_rank()`, which need
    `init_process_group()` first.
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if num_replicas is None or rank is None:
            if not dist.is_initialized():
                raise RuntimeError(
                    "DistributedSampler needs num_replicas and rank: pass them, or call "
                    "tinynorm.distributed.init_process_group() first"
                )
            if num_replicas is None:
                num_replicas = dist.get_world_size()
            if rank is None:
                rank = dist.get_rank()
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
        if rank >= num_replicas or rank < 0:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
            )
        self.dataset = dataset
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        n = self._n()
        if drop_last and n % self.num_replicas != 0:
            # PyTorch's ceil((n - num_replicas) / num_replicas), which is n // num_replicas
            self.num_samples = -(-(n - self.num_replicas) // self.num_replicas)
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _n(self) -> int:
        data = self.dataset
        if isinstance(data, int | np.integer):
            return int(data)
        if isinstance(data, tuple | list) and len(data) == 2 and hasattr(data[1], "__len__"):
            return len(data[1])  # DataLoader's (inputs, labels) pair
        return len(data)

    def __iter__(self) -> Iterator[int]:
        n = self._n()
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        # np.resize repeats the order from its start to total_size (padding), or cuts it
        order = np.resize(order, self.total_size)
        mine = order[self.rank : self.total_size : self.num_replicas]
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeding the next shuffles (with `seed`): call it at the start of every
        epoch, or every epoch has the same order."""
        self.epoch = epoch
