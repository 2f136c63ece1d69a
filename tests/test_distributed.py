"""`tinynorm.distributed` and SyncBatchNorm across processes: `mpiexec -n 2` and `-n 3` (an odd
world) run tests/distributed_check.py, whose ranks check the collectives and SyncBatchNorm
against one process on the whole batch. CI installs the `distributed` extra (mpi4py + mpich),
so there these never skip."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.distributed as dist
from tinynorm import nn

CHECK = Path(__file__).with_name("distributed_check.py")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
HAS_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
needs_mpi = pytest.mark.skipif(
    not HAS_MPI and "CI" not in os.environ,
    reason="mpi4py and mpiexec: pip install '.[distributed]'",
)


def mpiexec(ranks: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks python -m mpi4py distributed_check.py args`, each rank on one thread."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(CHECK), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@needs_mpi
@pytest.mark.parametrize(("ranks", "sizes"), [(2, "5,3"), (3, "4,0,1")], ids=["2-ranks", "3-ranks"])
def test_synced_norms_equal_one_process_on_the_whole_batch(ranks, sizes):
    """SyncBatchNorm, and batch renorm and mean-only batch norm once converted, on unequal local
    batches (one empty, one of a single sample); float64 to 1e-10: y, dx, the summed dγ and dβ,
    and the running estimates, over two training steps and one eval step."""
    done = mpiexec(ranks, "sync", sizes)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks_ok = sorted(int(r) for r in re.findall(r"ok (\d+)", done.stdout))  # lines may interleave
    assert ranks_ok == list(range(ranks)), done.stdout


@needs_mpi
def test_a_failing_rank_aborts_the_job_instead_of_hanging():
    done = mpiexec(2, "fail", timeout=60)
    assert done.returncode != 0
    assert "rank 1 fails before the collective" in done.stderr
    assert "ok" not in done.stdout


def test_without_a_process_group_the_calls_say_so():
    assert not dist.is_initialized()
    for call in (dist.get_rank, dist.get_world_size, dist.barrier):
        with pytest.raises(RuntimeError, match="Default process group has not been initialized"):
            call()
    with pytest.raises(ValueError, match="unknown backend 'gloo'"):
        dist.init_process_group("gloo")


def test_sync_batch_norm_without_a_group_is_batch_norm(rng):
    x = rng.standard_normal((4, 3, 2, 5))
    sync, plain = nn.SyncBatchNorm(3).double(), nn.BatchNorm2d(3).double()
    for _ in range(2):
        np.testing.assert_allclose(sync(tn.tensor(x)).numpy(), plain(tn.tensor(x)).numpy())
    assert list(sync.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(sync.state_dict()[key].numpy(), value.numpy())


def test_convert_sync_batchnorm_replaces_every_batch_norm_and_keeps_its_state(rng):
    layers = [nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)]
    model = nn.Sequential(*layers).double()
    model(tn.tensor(rng.standard_normal((2, 1, 6, 6))))  # running estimates off their start
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[1], nn.SyncBatchNorm)
    assert model[1].weight.dtype == np.float64
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key], err_msg=key)
    bn = nn.BatchNorm1d(5).eval()
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(sync, nn.SyncBatchNorm) and not sync.training


def test_convert_sync_batchnorm_syncs_batch_renorm_and_mean_only_in_place_and_no_others():
    brn, mean_only, group = nn.BatchRenorm2d(3), nn.MeanOnlyBatchNorm1d(3), nn.GroupNorm(1, 3)
    model = nn.Sequential(brn, nn.Sequential(mean_only, group))
    assert not brn.sync and not mean_only.sync
    assert nn.SyncBatchNorm.convert_sync_batchnorm(model) is model
    assert model[0] is brn and model[1][0] is mean_only and model[1][1] is group
    assert brn.sync and mean_only.sync and not hasattr(group, "sync")
    assert brn._sync_group() is None  # no group initialized: one process, plain batch renorm


class Loopback:
    """A process group of `size` ranks that all hold this rank's arrays; it records the size of
    every all-reduce."""

    rank = 0

    def __init__(self, size: int):
        self.size, self.reduced = size, []

    def all_reduce_(self, array, op="sum"):
        self.reduced.append(array.size)
        array *= self.size
        return array

    def broadcast(self, array, src=0):
        return array


def mlp() -> nn.Module:
    tn.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def test_ddp_reduces_each_bucket_once_in_reverse_order_and_keeps_equal_gradients(rng):
    group, model = Loopback(4), mlp()
    ddp = nn.parallel.DistributedDataParallel(model, group, bucket_cap_mb=20 * 8 / 2**20)
    assert [[p.shape for p in b] for b in ddp.buckets] == [[(3,), (3, 5)], [(5,)], [(5, 6)]]
    x = tn.tensor(rng.standard_normal((7, 6)))
    ddp(x).sum().backward()
    assert group.reduced == [18, 5, 30]
    reference = mlp()
    reference(x).sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-14)
    assert list(ddp.state_dict()) == ["module." + k for k in model.state_dict()]


def test_ddp_no_sync_reduces_nothing_and_a_parameter_without_gradient_is_named(rng):
    group, model = Loopback(2), mlp()
    ddp = nn.parallel.DistributedDataParallel(model, group)
    x = tn.tensor(rng.standard_normal((4, 6)))
    with ddp.no_sync():
        ddp(x).sum().backward()
    assert group.reduced == []
    ddp(x).sum().backward()
    assert group.reduced == [sum(p.numel() for p in model.parameters())]
    model[0](x).sum().backward()  # the second layer unused
    with pytest.raises(RuntimeError, match=r"got none .*\['2.weight', '2.bias'\]"):
        ddp(x)


def test_ddp_broadcasts_from_rank_0_at_construction_and_buffers_each_training_forward():
    class FromRank0(Loopback):
        def broadcast(self, array, src=0):
            assert src == 0
            self.broadcasts.append(array.dtype)
            return np.full_like(array, 7)

    group = FromRank0(2)
    group.broadcasts = []
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ddp = nn.parallel.DistributedDataParallel(model, group)
    assert all((t.numpy() == 7).all() for t in model.state_dict().values())
    assert group.broadcasts == [np.float32, np.int64]  # parameters with float buffers, then counts
    ddp(tn.ones((3, 2)))
    assert group.broadcasts[2:] == [np.float32, np.int64]
    ddp.eval()(tn.ones((3, 2)))
    assert len(group.broadcasts) == 4


def main_job(tmp_path, *args: str, ranks: int = 0) -> subprocess.CompletedProcess:
    """The main job on 512 mnist-lite images, offline, under `mpiexec -n ranks` (0: alone)."""
    quick = ["--offline", "--train-limit", "512", "--test-limit", "300", "--epochs", "1"]
    command = [sys.executable, "-m", "tinynorm.examples.mnist", *quick, *args]
    if ranks:
        command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", *command[1:]]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@needs_mpi
def test_main_job_on_2_ranks_with_sync_bn_trains_like_one_process_on_the_global_batch(tmp_path):
    """-n 2 --batch-size 32 --sync-bn sees the batches of one process at 64 (the sampler shares
    out one permutation) and takes the same steps: the same loss to float32 rounding. Rank 0
    alone prints and writes the checkpoint, which one process resumes."""
    logs = {n: tmp_path / f"log{n}.json" for n in (1, 2)}
    ckpt = tmp_path / "ckpt.tn"
    alone = main_job(tmp_path, "--batch-size", "64", "--log", str(logs[1]))
    both = main_job(
        tmp_path,
        *("--distributed", "--sync-bn", "--batch-size", "32"),
        *("--log", str(logs[2]), "--save", str(ckpt)),
        ranks=2,
    )
    assert alone.returncode == 0 and both.returncode == 0, both.stderr[-3000:]
    assert both.stdout.count("test accuracy:") == 1 and "32 x 2 ranks (SyncBN)" in both.stdout
    one, two = (json.loads(logs[n].read_text())[0] for n in (1, 2))
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=2 / 300)
    resumed = main_job(tmp_path, "--resume", str(ckpt), "--eval-only")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().endswith(f"test accuracy: {two['test_accuracy']:.4f}")


@needs_mpi
def test_main_job_error_on_the_ranks_ends_the_job_with_the_message(tmp_path):
    done = main_job(tmp_path, "--distributed", "--data-dir", str(tmp_path / "none"), ranks=2)
    assert done.returncode != 0
    assert "error:" in done.stderr and "test accuracy" not in done.stdout


def test_main_job_sync_bn_needs_distributed(capsys):
    from tinynorm.examples import mnist

    with pytest.raises(SystemExit):
        mnist.main(["--sync-bn"])
    assert "--sync-bn: needs --distributed" in capsys.readouterr().err


@needs_mpi
def test_sync_bn_experiment_quick_run_writes_every_setting_and_seed(tmp_path):
    """examples/sync_bn.py launches its own ranks: one row per setting and seed, the Markdown
    with mean ± std and a verdict, and the summary as the last line."""
    quick = ["--quick", "--offline", "--steps", "4", "--seeds", "0", "1", "--test-limit", "60"]
    command = [sys.executable, "-m", "tinynorm.examples.sync_bn", *quick, "--out", str(tmp_path)]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "sync_bn.csv").read_text().splitlines()
    assert lines[0].startswith("setting,seed,ranks,batch_per_rank,steps")
    assert sorted(line.split(",")[:2] for line in lines[1:]) == sorted(
        [s, str(seed)] for s in ("bn", "syncbn", "gn") for seed in (0, 1)
    )
    markdown = (tmp_path / "sync_bn.md").read_text()
    assert "2 ranks × batch 2" in markdown and "SyncBN beats local BN: SyncBN " in markdown
    assert re.search(r"2 seeds: \*\*(reproduced|not reproduced|inconclusive)\*\*", markdown)
    assert re.fullmatch(
        r"test accuracy \(mean ± std over 2 seeds\): local BN [\d.]+ ± [\d.]+, SyncBN .*, GN .*",
        done.stdout.strip().splitlines()[-1],
    )


def test_nccl_host_side_types_devices_and_a_clear_error_without_cupy(monkeypatch):
    """What the 'nccl' backend decides before any GPU call (its collectives need a GPU: issue
    17's checks): NCCL's type codes, one GPU per local rank, and the error without CuPy, raised
    before MPI is touched."""
    codes = {f"NCCL_{name.upper()}": i for i, name in enumerate(dist.NCCL_TYPES)}
    nccl = types.SimpleNamespace(**codes)
    assert dist.nccl_dtype(nccl, np.float32) == codes["NCCL_FLOAT32"]
    assert dist.nccl_dtype(nccl, np.dtype("int64")) == codes["NCCL_INT64"]
    with pytest.raises(TypeError, match="NCCL has no type for bool"):
        dist.nccl_dtype(nccl, np.bool_)
    assert [dist.local_device(r, 2) for r in range(4)] == [0, 1, 0, 1]
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        dist.local_device(0, 0)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(dist, "_mpi", lambda: pytest.fail("MPI touched"))
    with pytest.raises(RuntimeError, match=r"needs CuPy with NCCL: pip install 'tinynorm\[gpu\]'"):
        dist.init_process_group("nccl")
    assert not dist.is_initialized()
