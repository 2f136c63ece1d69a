"""Batch samplers: each epoch (one `for` loop over the sampler) yields NumPy index arrays.

A batch sampler is anything iterable that yields arrays of example indices, one per batch, and
has `len()` = the number of batches. The random ones own a NumPy Generator seeded once, so every
epoch is reshuffled, and the same seed gives the same sequence of epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..random import generator


def make_rng(seed: int | None) -> np.random.Generator:
    """A Generator for `seed`; with None, seeded from tinynorm's global generator, so that
    `tinynorm.manual_seed` makes the shuffling reproducible too."""
    if seed is None:
        seed = int(generator().integers(2**63))
    return np.random.default_rng(seed)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """How many batches `n` examples make: the last one partial unless `drop_last`."""
    return n // batch_size if drop_last else -(-n // batch_size)


def split_batches(indices: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    """Consecutive slices of `batch_size` indices; a shorter last one unless `drop_last`."""
    stop = num_batches(len(indices), batch_size, drop_last) * batch_size
    for start in range(0, min(stop, len(indices)), batch_size):
        yield indices[start : start + batch_size]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class SequentialBatchSampler:
    """Batches of 0, 1, ..., n-1 in order, or of the indices an index sampler yields each epoch.

    `source` is the number of examples n, or any re-iterable object with `len()` that yields
    indices (an array, a list, a custom sampler): it is read anew every epoch.
    """

    def __init__(self, source: int | Iterable[int], batch_size: int, drop_last: bool = False):
        _check_batch_size(batch_size)
        self.source = source
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[np.ndarray]:
        if isinstance(self.source, int | np.integer):
            indices = np.arange(self.source)
        else:
            indices = np.fromiter(iter(self.source), dtype=np.int64)
        return split_batches(indices, self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = self.source if isinstance(self.source, int | np.integer) else len(self.source)
        return num_batches(int(n), self.batch_size, self.drop_last)


class RandomBatchSampler:
    """Batches of a fresh random permutation of 0..n-1 every epoch (i.i.d. mini-batches)."""

    def __init__(self, n: int, batch_size: int, drop_last: bool = False, seed: int | None = None):
        _check_batch_size(batch_size)
        self.n = n
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rng = make_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        return split_batches(self.rng.permutation(self.n), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.drop_last)


class ClassBatchSampler:
    """Non-i.i.d. batches: each holds examples of at most `classes_per_batch` (k) classes.

    An epoch has as many batches as a plain sampler (len(labels) / batch_size, the last one
    partial unless `drop_last`). The exact rule:

    - At the start of an epoch each class's examples are shuffled into a queue.
    - For each batch, k distinct classes are drawn at random, each with probability proportional
      to the number of its examples not yet used this epoch (classes with none left are drawn,
      uniformly, only when fewer than k classes have any left).
    - The batch size is split among the k classes as evenly as possible (shares differ by at
      most one; the larger shares go to the classes drawn first), and each class gives its share
      from the front of its queue. A class whose queue runs out is reshuffled and starts again,
      so an example repeats within an epoch only once all of its class has been used.

    So every batch has the requested size and at most k classes, and an epoch uses (nearly)
    every example once.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        classes_per_batch: int = 2,
        seed: int | None = None,
        drop_last: bool = False,
    ):
        _check_batch_size(batch_size)
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
        classes, class_of = np.unique(labels, return_inverse=True)
        self.members = [np.flatnonzero(class_of == c) for c in range(len(classes))]
        if not 1 <= classes_per_batch <= len(classes):
            raise ValueError(
                f"classes_per_batch must be between 1 and the {len(classes)} classes present, "
                f"got {classes_per_batch}"
            )
        self.n = len(labels)
        self.batch_size = batch_size
        self.classes_per_batch = classes_per_batch
        self.drop_last = drop_last
        self.rng = make_rng(seed)

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[np.ndarray]:
        queues = [self.rng.permutation(m) for m in self.members]
        taken = np.zeros(len(queues), dtype=np.int64)  # position in each queue
        unused = np.array([len(m) for m in self.members])  # not yet used this epoch
        k = self.classes_per_batch
        for size in self._batch_sizes():
            chosen = self._draw_classes(unused)
            shares = np.full(k, size // k)
            shares[: size % k] += 1
            batch = []
            for c, share in zip(chosen, shares):
                while share > 0:
                    if taken[c] == len(queues[c]):  # class used up: reshuffle it
                        queues[c] = self.rng.permutation(self.members[c])
                        taken[c] = 0
                    part = queues[c][taken[c] : taken[c] + share]
                    batch.append(part)
                    taken[c] += len(part)
                    unused[c] = max(unused[c] - len(part), 0)
                    share -= len(part)
            yield np.concatenate(batch)

    def _batch_sizes(self) -> list[int]:
        full, rest = divmod(self.n, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])

    def _draw_classes(self, unused: np.ndarray) -> np.ndarray:
        """k distinct classes, weighted by their unused examples (see the class docstring)."""
        k = self.classes_per_batch
        fresh = np.flatnonzero(unused)
        if len(fresh) >= k:
            return self.rng.choice(fresh, size=k, replace=False, p=unused[fresh] / unused.sum())
        spent = np.flatnonzero(unused == 0)
        return np.concatenate([fresh, self.rng.choice(spent, size=k - len(fresh), replace=False)])
