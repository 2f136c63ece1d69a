"""DataLoader: mini-batches of (inputs, labels) as tinynorm Tensors.

Each batch is gathered with one NumPy index array (`x[indices]`), never item by item, so a whole
epoch of MNIST costs a few milliseconds of indexing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..tensor import Tensor
from .samplers import RandomBatchSampler, SequentialBatchSampler


class DataLoader:
    """Iterate over `data` in batches of (x, y): x float32, y int64, both Tensors.

    `data` is a pair of arrays `(inputs, labels)` of equal length, or a dataset: anything with
    `len()` whose `dataset[indices]` (an index array) returns such a pair, like `MNIST`.

    The order of examples comes from, in this priority:
    - `batch_sampler`: yields the index array of every batch itself (e.g. `ClassBatchSampler`);
      then batch_size, shuffle, sampler and drop_last must keep their defaults;
    - `sampler`: yields the example indices of an epoch, grouped here into batches;
    - `shuffle=True`: a new permutation each epoch from a Generator seeded once with `seed`
      (same seed, same sequence of epochs; None draws the seed from `tinynorm.manual_seed`'s);
    - otherwise 0, 1, ..., n-1 in order.

    `len(loader)` is the number of batches; the last one is smaller unless `drop_last`.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        sampler: Iterable[int] | None = None,
        batch_sampler: Iterable[np.ndarray] | None = None,
    ):
        if isinstance(data, tuple | list):
            if len(data) != 2:
                raise ValueError(f"data must be a pair (inputs, labels), got {len(data)} items")
            if len(data[0]) != len(data[1]):
                raise ValueError(
                    f"data holds {len(data[0])} inputs but {len(data[1])} labels; they must match"
                )
            data = (np.asarray(data[0]), np.asarray(data[1]))
        self.data = data
        n = len(data[1]) if isinstance(data, tuple) else len(data)
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler chooses the batches itself: leave batch_size, shuffle, "
                    "sampler and drop_last at their defaults"
                )
            self.batch_sampler = batch_sampler
        elif sampler is not None:
            if shuffle:
                raise ValueError("sampler chooses the order itself: leave shuffle=False")
            self.batch_sampler = SequentialBatchSampler(sampler, batch_size, drop_last)
        elif shuffle:
            self.batch_sampler = RandomBatchSampler(n, batch_size, drop_last, seed)
        else:
            self.batch_sampler = SequentialBatchSampler(n, batch_size, drop_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for indices in self.batch_sampler:
            x, y = self._gather(np.asarray(indices, dtype=np.int64))
            yield Tensor(np.asarray(x, dtype=np.float32)), Tensor(np.asarray(y, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _gather(self, indices: np.ndarray) -> Sequence[np.ndarray]:
        if isinstance(self.data, tuple):
            inputs, labels = self.data
            return inputs[indices], labels[indices]
        return self.data[indices]
