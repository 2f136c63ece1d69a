"""Run by tests/test_distributed.py under `mpiexec -n R python -m mpi4py`: every rank checks its
share against one process on the whole batch, and prints `ok R` when all its checks pass (any
failed check raises, and `-m mpi4py` aborts the whole job)."""

import sys

import numpy as np

import tinynorm as tn
import tinynorm.distributed as dist
from tinynorm import nn
from tinynorm.nn import functional as F


def collectives(rank: int, world: int) -> None:
    t = tn.tensor(np.full(3, rank + 1.0))
    dist.all_reduce(t)
    assert t.numpy().tolist() == [world * (world + 1) / 2] * 3, t
    dist.all_reduce(t, op="max")
    assert t.numpy()[0] == world * (world + 1) / 2
    gathered = [tn.zeros(2) for _ in range(world)]
    dist.all_gather(gathered, tn.tensor(np.array([rank, -rank], np.float32)))
    assert [g.numpy().tolist() for g in gathered] == [[r, -r] for r in range(world)]
    b = tn.tensor(np.arange(4.0) * (rank + 1))
    dist.broadcast(b, src=world - 1)
    assert b.numpy().tolist() == (np.arange(4.0) * world).tolist()
    dist.barrier()


def layer_pairs(C: int, dims: int):
    """(synced layer, the same layer in one process) for batch norm, batch renorm (r and d
    active from the first step) and mean-only batch norm."""
    one_d = dims == 1
    renorm = {"rmax": 1.5, "dmax": 0.5, "warmup_steps": 0, "rmax_steps": 0, "dmax_steps": 0}
    makers = [
        lambda: nn.BatchRenorm1d(C, **renorm) if one_d else nn.BatchRenorm2d(C, **renorm),
        lambda: nn.MeanOnlyBatchNorm1d(C) if one_d else nn.MeanOnlyBatchNorm2d(C),
    ]
    pairs = [(nn.SyncBatchNorm(C), nn.BatchNorm1d(C) if one_d else nn.BatchNorm2d(C))]
    pairs += [(nn.SyncBatchNorm.convert_sync_batchnorm(make()), make()) for make in makers]
    for pair in pairs:
        for layer in pair:
            layer.double()
            if layer.weight is not None:
                layer.weight.data[...] = np.linspace(0.5, 1.5, C)
            layer.bias.data[...] = np.linspace(-1, 1, C)
    return pairs


def synced_layers(rank: int, world: int, sizes: list[int], shape: tuple[int, ...]) -> None:
    """Every synced layer on this rank's rows of a global batch (maybe none), against the same
    layer on all of them in one process (float64)."""
    for ours, alone in layer_pairs(shape[0], len(shape)):
        assert ours.sync and ours._sync_group() is not None, ours
        same_as_one_process(ours, alone, rank, sizes, shape)


def same_as_one_process(ours, alone, rank: int, sizes: list[int], shape: tuple[int, ...]):
    """Two training steps and one eval step: y, dx, the ranks' summed dγ and dβ, and the
    running estimates."""
    rng = np.random.default_rng(0)  # the same numbers on every rank
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    close = {"rtol": 1e-10, "atol": 1e-12}
    for training in (True, True, False):
        ours.train(training)
        alone.train(training)
        x = 2.0 + 3.0 * rng.standard_normal((sum(sizes), *shape))
        dy = rng.standard_normal(x.shape)
        x_all, x_mine = tn.tensor(x, requires_grad=True), tn.tensor(x[lo:hi], requires_grad=True)
        y_all, y_mine = alone(x_all), ours(x_mine)
        y_all.backward(tn.tensor(dy))
        y_mine.backward(tn.tensor(dy[lo:hi]))
        np.testing.assert_allclose(y_mine.numpy(), y_all.numpy()[lo:hi], **close)
        np.testing.assert_allclose(x_mine.grad.numpy(), x_all.grad.numpy()[lo:hi], **close)
        for name in ("weight", "bias")[ours.weight is None :]:  # summed, the whole batch's
            grad = getattr(ours, name).grad
            dist.all_reduce(grad)
            np.testing.assert_allclose(grad.numpy(), getattr(alone, name).grad.numpy(), **close)
            getattr(ours, name).grad = getattr(alone, name).grad = None
        for key, value in alone.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[key].numpy(), value.numpy(), **close)


def cnn(seed: int) -> nn.Module:
    tn.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5)]
    return nn.Sequential(*layers).double()


def data_parallel(rank: int, world: int) -> None:
    """DistributedDataParallel (with SyncBatchNorm) on p ranks × 32 against one process × 32p,
    SGD with momentum: rank 0's parameters everywhere from the start, the gradients of the
    first step equal to 1e-10, the parameters after 10 steps to 1e-8; no_sync reduces nothing,
    and the next backward reduces the accumulated sum."""
    alone = cnn(0)
    ours = nn.parallel.DistributedDataParallel(
        nn.SyncBatchNorm.convert_sync_batchnorm(cnn(0 if rank == 0 else 10 + rank))
    )
    for (name, p), q in zip(ours.module.named_parameters(), alone.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    sgd_ours, sgd_alone = (tn.optim.SGD(m.parameters(), 0.1, 0.9) for m in (ours, alone))
    rng = np.random.default_rng(1)  # the same batches on every rank
    lo, hi = 32 * rank, 32 * (rank + 1)
    for step in range(10):
        x, y = rng.standard_normal((32 * world, 1, 8, 8)), rng.integers(0, 5, 32 * world)
        for model, opt, rows in ((ours, sgd_ours, slice(lo, hi)), (alone, sgd_alone, slice(None))):
            opt.zero_grad()
            F.cross_entropy(model(tn.tensor(x[rows])), tn.tensor(y[rows])).backward()
        if step == 0:
            for (name, p), q in zip(ours.module.named_parameters(), alone.parameters()):
                np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), 1e-10, 1e-12, name)
        sgd_ours.step()
        sgd_alone.step()
    for key, value in alone.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()["module." + key].numpy(), value.numpy(), 1e-8)

    x, y = tn.tensor(rng.standard_normal((32, 1, 8, 8))), tn.tensor(rng.integers(0, 5, 32))
    ours.zero_grad()
    with ours.no_sync():
        F.cross_entropy(ours(x * (rank + 1)), y).backward()  # another batch on every rank
    local = ours.module[0].weight.grad.numpy().copy()
    spread = tn.tensor(local)
    dist.all_reduce(spread, op="max")
    assert world == 1 or not np.array_equal(spread.numpy(), local), "no_sync reduced"
    F.cross_entropy(ours(x * (rank + 1)), y).backward()
    mean = tn.tensor(2 * local)
    dist.all_reduce(mean)
    np.testing.assert_allclose(ours.module[0].weight.grad.numpy(), mean.numpy() / world, 1e-10)


def main() -> None:
    dist.init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    if sys.argv[1] == "fail":
        if rank == 1:
            raise RuntimeError("rank 1 fails before the collective")
        dist.barrier()
    else:
        collectives(rank, world)
        sizes = [int(n) for n in sys.argv[2].split(",")]
        synced_layers(rank, world, sizes, (3, 4, 5))
        synced_layers(rank, world, sizes, (6,))  # BatchNorm1d of (N, C): the column kernels
        data_parallel(rank, world)
    print(f"ok {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
