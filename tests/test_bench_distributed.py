"""bench/distributed.py: the cost model's properties, and the all-reduce bench's output under
mpiexec (--quick; the shape of the table only, never a timing)."""

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tinynorm.examples.mnist import build_model

BENCH = Path(__file__).resolve().parent.parent / "bench"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
HAS_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
needs_mpi = pytest.mark.skipif(  # as in test_distributed.py
    not HAS_MPI and "CI" not in os.environ,
    reason="mpi4py and mpiexec: pip install '.[distributed]'",
)


def table_rows(text: str) -> list[list[str]]:
    """The rows of the one Markdown table in `text`, each a list of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture(scope="module")
def bench():
    """bench/distributed.py as a module (it imports bench/common.py, as the scripts do)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_distributed", BENCH / "distributed.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    yield module
    del sys.modules[spec.name]


def test_ring_allreduce_on_one_rank_costs_nothing(bench):
    assert bench.ring_allreduce_seconds(1e8, 1, 25e9, 5e-6) == 0.0
    assert bench.ring_allreduce_terms(1e8, 1, 25e9) == (0.0, 0.0)
    with pytest.raises(ValueError):
        bench.ring_allreduce_seconds(1e8, 0, 25e9)


def test_ring_bytes_term_approaches_twice_the_bytes_over_the_bandwidth(bench):
    nbytes, bandwidth = 1e8, 25e9
    limit = 2 * nbytes / bandwidth
    terms = [bench.ring_allreduce_terms(nbytes, p, bandwidth)[0] for p in (2, 8, 64, 512, 10**6)]
    assert terms == sorted(terms) and all(t < limit for t in terms)  # increasing, below 2n/B
    assert terms[0] == pytest.approx(nbytes / bandwidth)  # p = 2: n/B
    assert terms[-1] == pytest.approx(limit, rel=1e-5)
    # the latency term is 2(p - 1)·α, and the total is the sum of the two
    assert bench.ring_allreduce_terms(nbytes, 9, bandwidth, 1e-5)[1] == pytest.approx(16e-5)
    assert bench.ring_allreduce_seconds(nbytes, 9, bandwidth, 1e-5) == pytest.approx(
        sum(bench.ring_allreduce_terms(nbytes, 9, bandwidth, 1e-5))
    )


def test_efficiencies_are_fractions_and_overlap_never_hurts(bench):
    rows = bench.model_rows()
    assert len(rows) == len(bench.WORKLOADS) * len(bench.LINKS) * len(bench.GPUS)
    for row in rows:
        assert 0 < row["efficiency"] <= 1 and 0 < row["efficiency_overlap"] <= 1, row
        assert row["efficiency_overlap"] >= row["efficiency"], row
        assert row["allreduce_s"] == pytest.approx(row["bytes_term_s"] + row["latency_term_s"])
    assert bench.efficiency(1.0, 0.0) == 1.0 == bench.efficiency(1.0, 0.5, overlap=True)
    assert bench.efficiency(1.0, 3.0) == 0.25 and bench.efficiency(1.0, 3.0, overlap=True) == 1 / 3
    # a faster link never lowers the efficiency, more GPUs never raise it (weak scaling)
    by = {(r["model"], r["link_bytes_per_s"], r["gpus"]): r["efficiency"] for r in rows}
    for work in bench.WORKLOADS:
        for p in bench.GPUS:
            slow, fast = (by[work.name, link, p] for link in bench.LINKS)
            assert fast >= slow
        for link in bench.LINKS:
            series = [by[work.name, link, p] for p in bench.GPUS]
            assert series == sorted(series, reverse=True)


def test_the_mnist_cnn_of_the_model_is_the_main_jobs(bench):
    for width in (16, 8):
        model = build_model("bn", total_steps=1, width=width)
        assert bench.mnist_cnn_params(width) == sum(p.numel() for p in model.parameters())
    assert bench.MNIST_CNN.params == bench.mnist_cnn_params(16) == 29_034
    assert bench.MNIST_CNN.gradient_bytes == 4 * 29_034
    # forward FLOPs: conv1 2·25·16·28², conv2 2·400·32·14², linear 2·1568·10
    assert bench.mnist_cnn_forward_flops() == 627_200 + 5_017_600 + 31_360
    assert math.isclose(bench.compute_seconds(1e12, 32, 1e14), 0.32)


def test_model_prints_one_table_row_per_case():
    done = subprocess.run(
        [sys.executable, str(BENCH / "distributed.py"), "model"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    table = table_rows(done.stdout)
    assert table[0][:3] == ["model", "link GB/s", "GPUs"] and len(table) == 2 + 2 * 2 * 3
    assert "29,034 parameters" in done.stdout


@needs_mpi
def test_allreduce_quick_under_mpiexec_writes_a_table():
    done = subprocess.run(
        [sys.executable, str(BENCH / "distributed.py"), "allreduce", "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = table_rows(done.stdout)
    assert table[0] == [
        "dtype",
        "values",
        "MB",
        "call",
        "ms",
        "algbw GB/s",
        "busbw GB/s",
        "× mpi4py",
    ]
    calls = ["mpi4py", "ProcessGroup.all_reduce", "dist.all_reduce(Tensor)"]
    assert [row[3] for row in table[2:]] == calls * 4  # 2 dtypes × 2 sizes
    assert all(float(row[4]) > 0 for row in table[2:])
    assert "2 ranks" in done.stdout
