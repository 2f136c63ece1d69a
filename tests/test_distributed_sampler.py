"""DistributedSampler: the ranks' shares of a dataset, with PyTorch's lengths, padding and order."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import tinynorm.distributed as dist
from tinynorm.data import DataLoader, DistributedSampler


def torch_num_samples(n: int, replicas: int, drop_last: bool) -> int:
    """PyTorch's formula, written as it is there."""
    if drop_last and n % replicas != 0:
        return math.ceil((n - replicas) / replicas)
    return math.ceil(n / replicas)


def torch_indices(n: int, replicas: int, rank: int, drop_last: bool) -> list[int]:
    """PyTorch's unshuffled `__iter__`, transcribed with lists."""
    total = torch_num_samples(n, replicas, drop_last) * replicas
    indices = list(range(n))
    if not drop_last:
        padding = total - len(indices)
        if padding <= len(indices):
            indices += indices[:padding]
        else:
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
    else:
        indices = indices[:total]
    return indices[rank:total:replicas]


def shares(n, replicas: int, **kwargs) -> list[list[int]]:
    return [list(DistributedSampler(n, replicas, rank, **kwargs)) for rank in range(replicas)]


def interleave(parts: list[list[int]]) -> list[int]:
    """The epoch's whole order back from the ranks' shares (rank r took order[r::replicas])."""
    return [part[i] for i in range(len(parts[0])) for part in parts]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 10, 11, 12])
def test_ranks_partition_the_padded_dataset(n, replicas, drop_last, shuffle):
    expected = torch_num_samples(n, replicas, drop_last)
    parts = []
    for rank in range(replicas):
        sampler = DistributedSampler(n, replicas, rank, shuffle=shuffle, drop_last=drop_last)
        assert len(sampler) == sampler.num_samples == expected
        assert sampler.total_size == expected * replicas
        part = list(sampler)
        assert len(part) == expected
        assert all(isinstance(i, int) and 0 <= i < n for i in part)
        parts.append(part)
    everything = [i for part in parts for i in part]
    if drop_last:
        assert len(set(everything)) == len(everything) == n - n % replicas
    else:
        assert set(everything) == set(range(n))
        assert len(everything) == math.ceil(n / replicas) * replicas
        # the padding repeats the epoch's order from its start
        order = interleave(parts)
        assert order == [order[k % n] for k in range(len(order))]


def test_known_shares():
    assert shares(10, 4, shuffle=False) == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert shares(10, 4, shuffle=False, drop_last=True) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # fewer examples than ranks: the order is repeated more than once
    assert shares(2, 5, shuffle=False) == [[0], [1], [0], [1], [0]]
    assert shares(3, 4, shuffle=False, drop_last=True) == [[], [], [], []]


@pytest.mark.parametrize(("n", "replicas"), [(10, 2), (12, 3), (11, 4)])
def test_shuffle_false_is_strided(n, replicas):
    for rank, part in enumerate(shares(n, replicas, shuffle=False)):
        assert part[: len(range(rank, n, replicas))] == list(range(rank, n, replicas))
    assert interleave(shares(n, replicas, shuffle=False))[:n] == list(range(n))


def test_same_seed_and_epoch_same_order_on_every_rank():
    n, replicas = 12, 3
    order = interleave(shares(n, replicas, seed=5))
    assert sorted(order) == list(range(n))  # the ranks' shares fit into one permutation
    assert order != list(range(n))
    assert interleave(shares(n, replicas, seed=5)) == order  # other processes: same order
    assert interleave(shares(n, replicas, seed=6)) != order

    samplers = [DistributedSampler(n, replicas, rank, seed=5) for rank in range(replicas)]
    assert interleave([list(s) for s in samplers]) == order
    assert interleave([list(s) for s in samplers]) == order  # no set_epoch: the same again
    for s in samplers:
        s.set_epoch(1)
    assert samplers[0].epoch == 1
    epoch1 = interleave([list(s) for s in samplers])
    assert sorted(epoch1) == list(range(n))
    assert epoch1 != order
    for s in samplers:
        s.set_epoch(0)
    assert interleave([list(s) for s in samplers]) == order


def test_documented_generator():
    """The order is NumPy's default_rng(seed + epoch).permutation(n), as documented."""
    sampler = DistributedSampler(9, 1, 0, seed=3)
    sampler.set_epoch(4)
    assert list(sampler) == np.random.default_rng(7).permutation(9).tolist()


def test_bad_rank_or_replicas():
    for rank in (-1, 3, 4):
        with pytest.raises(ValueError, match=rf"Invalid rank {rank}, .*\[0, 2\]"):
            DistributedSampler(10, num_replicas=3, rank=rank)
    with pytest.raises(ValueError, match="num_replicas"):
        DistributedSampler(10, num_replicas=0, rank=0)


def test_without_process_group(monkeypatch):
    monkeypatch.setattr(dist, "_world", None)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(10)
    with pytest.raises(RuntimeError, match="num_replicas and rank"):
        DistributedSampler(10, num_replicas=2)
    assert len(DistributedSampler(10, num_replicas=2, rank=1)) == 5


def test_defaults_come_from_process_group(monkeypatch):
    monkeypatch.setattr(dist, "_world", SimpleNamespace(rank=1, size=3))
    sampler = DistributedSampler(list(range(10)), shuffle=False)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (3, 1, 4)
    assert list(sampler) == [1, 4, 7, 0]
    assert DistributedSampler(10, rank=0).num_replicas == 3
    assert DistributedSampler(10, num_replicas=5).rank == 1


def test_datasets_with_len():
    class Dataset:
        def __len__(self) -> int:
            return 7

    x = np.zeros((7, 2), np.float32)
    y = np.arange(7)
    for dataset in (Dataset(), list(range(7)), (x, y), 7):
        assert len(DistributedSampler(dataset, 2, 0)) == 4


def test_with_data_loader():
    n = 10
    x = np.arange(n, dtype=np.float32)[:, None].repeat(3, axis=1)
    y = np.arange(n)
    sampler = DistributedSampler((x, y), num_replicas=3, rank=1, shuffle=False)
    loader = DataLoader((x, y), batch_size=3, sampler=sampler)
    assert len(loader) == 2
    batches = list(loader)
    assert [b[1].numpy().tolist() for b in batches] == [[1, 4, 7], [0]]
    assert batches[0][0].numpy()[:, 0].tolist() == [1.0, 4.0, 7.0]

    sampler = DistributedSampler(n, num_replicas=2, rank=0, seed=1)
    loader = DataLoader((x, y), batch_size=2, sampler=sampler)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = np.concatenate([b[1].numpy() for b in loader]).tolist()
        assert seen == list(sampler)
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]


def test_matches_torch_unshuffled():
    torch_data = pytest.importorskip("torch.utils.data")
    for n in (0, 1, 2, 5, 10, 11, 12, 13):
        for replicas in (1, 2, 3, 4, 5):
            for drop_last in (False, True):
                for rank in range(replicas):
                    theirs = torch_data.DistributedSampler(
                        list(range(n)), replicas, rank, shuffle=False, drop_last=drop_last
                    )
                    ours = DistributedSampler(n, replicas, rank, shuffle=False, drop_last=drop_last)
                    assert len(ours) == len(theirs)
                    assert ours.total_size == theirs.total_size
                    assert list(ours) == list(theirs)


@pytest.mark.parametrize("drop_last", [False, True])
def test_matches_pytorch_transcription(drop_last):
    """Without torch: against PyTorch's unshuffled `__iter__` written out with lists."""
    for n in (0, 1, 2, 5, 10, 11, 12, 13):
        for replicas in (1, 2, 3, 4, 5):
            for rank in range(replicas):
                ours = DistributedSampler(n, replicas, rank, shuffle=False, drop_last=drop_last)
                assert list(ours) == torch_indices(n, replicas, rank, drop_last)
