"""`tinynorm.distributed` and SyncBatchNorm across processes: `mpiexec -n 2` and `-n 3` (an odd
world) run tests/distributed_check.py, whose ranks check the collectives and SyncBatchNorm
against one process on the whole batch. CI installs the `distributed` extra (mpi4py + mpich),
so there these never skip."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
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
