"""Data-parallel training's communication: the all-reduce measured here, and a cost model.

    python bench/distributed.py allreduce [--ranks 2] [--repeat 20] [--quick] [--json PATH]
    python bench/distributed.py model [--json PATH]

`allreduce` starts `mpiexec -n RANKS python -m mpi4py bench/distributed.py allreduce-child ...`
(the mpiexec next to this Python, each rank on one thread: NUMBA_NUM_THREADS, OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS = 1) and times, for 1M and 10M values in float32 and float64:

- `mpi4py`: the raw `comm.Allreduce(MPI.IN_PLACE, buf)` on a NumPy array;
- `ProcessGroup.all_reduce`: `tinynorm.distributed`'s group call on the same array, which first
  copies it (`np.ascontiguousarray(a).copy()`, a fresh allocation) and reduces the copy in place;
- `dist.all_reduce(Tensor)`: the public call on a Tensor, which reduces a contiguous tensor's
  array in place (`ProcessGroup.all_reduce_`: no copy).

Each call is timed on every rank after a barrier; a repetition's time is the slowest rank's;
the table gives the median of `--repeat` repetitions after 3 warm-up calls (the three calls
alternate within each repetition). Algorithm bandwidth algbw = bytes / time; bus bandwidth
busbw = algbw · 2(p − 1)/p (NCCL-tests' convention: the bytes each rank sends and receives in
a ring all-reduce, so comparable across p; for p = 2 it equals algbw).

`model` prints the cost of one data-parallel training step under weak scaling (a fixed batch per
GPU) on paper, with the alpha-beta model of a ring all-reduce of the gradient:

    T_ring(p, n) = 2(p − 1)/p · n / B + 2(p − 1) · α       (n bytes, link bandwidth B, latency α)
    T_compute    = F · b / R                               (F FLOPs per example, forward +
                                                            backward; b per-GPU batch; R FLOP/s)
    efficiency   = T_compute / (T_compute + T_ring)         no overlap
                 = T_compute / max(T_compute, T_ring)       ideal overlap of backward and comm

(a ring all-reduce is a reduce-scatter and an all-gather, each p − 1 steps that send n/p bytes
per link and pay one latency α). Assumptions, all stated, none measured:

- R = 100 TFLOP/s sustained per GPU: an H100 SXM in mixed precision at about 10% of its 989
  TFLOP/s dense BF16 peak. For the MNIST CNN at batch 32 this is optimistic (so small a step is
  bound by kernel launches, a few µs each), which only makes its compute look smaller;
- b = 32 examples per GPU; α = 5 µs per ring step; B = 25 GB/s (about a 200 Gb/s network port
  per GPU) and 200 GB/s (NVLink class), each the per-direction bandwidth of every ring link;
- gradients in float32, all-reduced as one buffer once per step (one bucket: PyTorch's DDP
  uses 25 MB buckets, each paying the latency term again); a flat ring (no tree or
  hierarchical all-reduce, whose latency term grows as log p); the optimizer, data loading
  and the norm layers' own collectives (SyncBatchNorm) are left out;
- the MNIST CNN is the main job's (`tinynorm.examples.mnist.build_model("bn", ...)`, width 16:
  29,034 parameters), F = 3 × its forward FLOPs (2 per multiply-add of the two 5×5 convolutions
  and the 1568 → 10 layer; norms, ReLU and pooling are left out): 3 × 5.68 = 17.0 MFLOP;
- ResNet-50: 25M parameters, F = 3 × 4.1 GFLOP per 224² image.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common

SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (1_000, 10_000)
DTYPES = ("float32", "float64")
IMPLS = ("mpi4py", "ProcessGroup.all_reduce", "dist.all_reduce(Tensor)")
WARMUP = 3
ONE_THREAD = {name: "1" for name in common.THREAD_VARIABLES}

# the cost model's stated assumptions (see the docstring)
GPU_FLOPS = 100e12  # sustained FLOP/s per GPU (H100 SXM, mixed precision, ~10% of peak)
BATCH_PER_GPU = 32
LATENCY = 5e-6  # seconds per ring step
LINKS = (25e9, 200e9)  # bytes/s per ring link, each direction
GPUS = (8, 64, 512)
GRAD_BYTES = 4  # float32 gradients


# --- the cost model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A model to train data-parallel: its parameter count (one float32 gradient each) and its
    FLOPs per example for forward + backward."""

    name: str
    params: int
    flops_per_example: float

    @property
    def gradient_bytes(self) -> int:
        return GRAD_BYTES * self.params


def mnist_cnn_params(width: int = 16) -> int:
    """Parameters of the main job's CNN with a norm that has an affine (γ, β) per channel:
    conv1 (1 → w, 5×5, bias) + 2w + conv2 (w → 2w, 5×5, bias) + 2·2w + linear (2w·7·7 → 10)."""
    conv1 = width * 1 * 25 + width
    conv2 = 2 * width * width * 25 + 2 * width
    head = 10 * 2 * width * 7 * 7 + 10
    return conv1 + 2 * width + conv2 + 2 * 2 * width + head


def mnist_cnn_forward_flops(width: int = 16) -> int:
    """Forward FLOPs per 28×28 image, 2 per multiply-add: conv1 (25 MACs per output, w × 28²
    outputs), conv2 (25w MACs per output, 2w × 14² outputs), linear (2w·49 → 10)."""
    conv1 = 2 * 25 * width * 28 * 28
    conv2 = 2 * 25 * width * 2 * width * 14 * 14
    head = 2 * 2 * width * 7 * 7 * 10
    return conv1 + conv2 + head


MNIST_CNN = Workload("MNIST CNN (main job)", mnist_cnn_params(), 3.0 * mnist_cnn_forward_flops())
RESNET50 = Workload("ResNet-50", 25_000_000, 3 * 4.1e9)
WORKLOADS = (MNIST_CNN, RESNET50)


def ring_allreduce_terms(
    nbytes: float, p: int, bandwidth: float, latency: float = LATENCY
) -> tuple[float, float]:
    """The ring all-reduce's two terms in seconds: bytes 2(p − 1)/p · n/B and latency
    2(p − 1)·α (both 0 for p = 1)."""
    if p < 1:
        raise ValueError(f"p must be at least 1, got {p}")
    steps = 2 * (p - 1)
    return steps / p * nbytes / bandwidth, steps * latency


def ring_allreduce_seconds(
    nbytes: float, p: int, bandwidth: float, latency: float = LATENCY
) -> float:
    """T_ring = 2(p − 1)/p · n/B + 2(p − 1)·α: seconds to all-reduce `nbytes` over a ring of
    `p` ranks with links of `bandwidth` bytes/s and `latency` seconds per step."""
    return sum(ring_allreduce_terms(nbytes, p, bandwidth, latency))


def compute_seconds(
    flops_per_example: float, batch: int = BATCH_PER_GPU, flops_per_second: float = GPU_FLOPS
) -> float:
    """T_compute = F · b / R: one GPU's forward + backward on its batch."""
    return flops_per_example * batch / flops_per_second


def efficiency(compute: float, comm: float, overlap: bool = False) -> float:
    """Weak-scaling efficiency, the fraction of a step spent computing: T_c / (T_c + T_comm)
    without overlap, T_c / max(T_c, T_comm) with the communication ideally hidden."""
    step = max(compute, comm) if overlap else compute + comm
    return compute / step


def model_rows(
    workloads: tuple[Workload, ...] = WORKLOADS,
    gpus: tuple[int, ...] = GPUS,
    links: tuple[float, ...] = LINKS,
    batch: int = BATCH_PER_GPU,
    flops_per_second: float = GPU_FLOPS,
    latency: float = LATENCY,
) -> list[dict]:
    """One row per workload, link bandwidth and GPU count: the step's terms in seconds and the
    two efficiencies."""
    rows = []
    for work in workloads:
        compute = compute_seconds(work.flops_per_example, batch, flops_per_second)
        for bandwidth in links:
            for p in gpus:
                data, lat = ring_allreduce_terms(work.gradient_bytes, p, bandwidth, latency)
                rows.append(
                    {
                        "model": work.name,
                        "params": work.params,
                        "gradient_bytes": work.gradient_bytes,
                        "link_bytes_per_s": bandwidth,
                        "gpus": p,
                        "compute_s": compute,
                        "bytes_term_s": data,
                        "latency_term_s": lat,
                        "allreduce_s": data + lat,
                        "efficiency": efficiency(compute, data + lat),
                        "efficiency_overlap": efficiency(compute, data + lat, overlap=True),
                    }
                )
    return rows


def model_table(rows: list[dict]) -> str:
    """`model_rows` as a Markdown table, times in ms."""
    header = [
        "model",
        "link GB/s",
        "GPUs",
        "compute ms",
        "bytes term ms",
        "latency term ms",
        "all-reduce ms",
        "efficiency, no overlap",
        "efficiency, ideal overlap",
    ]
    lines = [
        [
            row["model"],
            f"{row['link_bytes_per_s'] / 1e9:g}",
            str(row["gpus"]),
            f"{1e3 * row['compute_s']:.4f}",
            f"{1e3 * row['bytes_term_s']:.4f}",
            f"{1e3 * row['latency_term_s']:.3f}",
            f"{1e3 * row['allreduce_s']:.3f}",
            f"{100 * row['efficiency']:.1f}%",
            f"{100 * row['efficiency_overlap']:.1f}%",
        ]
        for row in rows
    ]
    return common.markdown_table(header, lines)


def run_model(args: argparse.Namespace) -> int:
    rows = model_rows()
    print(
        f"one data-parallel step, weak scaling: batch {BATCH_PER_GPU} per GPU, "
        f"{GPU_FLOPS / 1e12:g} TFLOP/s per GPU, float32 gradients in one ring all-reduce, "
        f"α = {LATENCY * 1e6:g} µs per step"
    )
    for work in WORKLOADS:
        print(
            f"{work.name}: {work.params:,} parameters ({work.gradient_bytes / 1e6:.3f} MB of "
            f"gradient), {work.flops_per_example / 1e6:,.1f} MFLOP per example (fwd + bwd)"
        )
    print()
    print(model_table(rows))
    if args.json:
        settings = {
            "batch_per_gpu": BATCH_PER_GPU,
            "flops_per_second": GPU_FLOPS,
            "latency_s": LATENCY,
        }
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=1)
            f.write("\n")
    return 0


# --- the all-reduce measured ---------------------------------------------------------------


def bus_bandwidth(algbw: float, p: int) -> float:
    """NCCL-tests' bus bandwidth: algbw · 2(p − 1)/p."""
    return algbw * 2 * (p - 1) / p


def allreduce_child(spec: dict) -> dict | None:
    """One rank's side (under mpiexec): time the three calls; rank 0 returns the rows and the
    machine, the other ranks None."""
    common.set_threads(1)
    import numpy as np
    from mpi4py import MPI

    import tinynorm as tn
    import tinynorm.distributed as dist

    dist.init_process_group()
    group = dist.group()
    comm, p = group.comm, group.size
    rows = []
    for dtype in spec["dtypes"]:
        for n in spec["sizes"]:
            raw = np.ones(n, dtype)
            array = np.ones(n, dtype)
            tensor = tn.tensor(np.ones(n, dtype))
            check = group.all_reduce(array)  # correct before it is timed
            if not np.array_equal(check, np.full(n, p, dtype)):
                raise RuntimeError(f"all_reduce of ones gave {check[:4]}, expected {p}")
            calls = {
                "mpi4py": lambda raw=raw: comm.Allreduce(MPI.IN_PLACE, raw),
                "ProcessGroup.all_reduce": lambda array=array: group.all_reduce(array),
                "dist.all_reduce(Tensor)": lambda tensor=tensor: dist.all_reduce(tensor),
            }
            for call in calls.values():
                for _ in range(WARMUP):
                    call()
            times = np.zeros((len(IMPLS), spec["repeat"]))
            for r in range(spec["repeat"]):
                for i, name in enumerate(IMPLS):
                    comm.Barrier()
                    start = time.perf_counter()
                    calls[name]()
                    times[i, r] = time.perf_counter() - start
            comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)  # a repetition: the slowest rank
            nbytes = n * np.dtype(dtype).itemsize
            for i, name in enumerate(IMPLS):
                seconds = statistics.median(times[i])
                algbw = nbytes / seconds
                rows.append(
                    {
                        "impl": name,
                        "dtype": dtype,
                        "count": n,
                        "bytes": nbytes,
                        "ranks": p,
                        "ms": 1e3 * seconds,
                        "min_ms": 1e3 * times[i].min(),
                        "max_ms": 1e3 * times[i].max(),
                        "algbw_gb_per_s": algbw / 1e9,
                        "busbw_gb_per_s": bus_bandwidth(algbw, p) / 1e9,
                    }
                )
    if group.rank != 0:
        return None
    import mpi4py

    info = common.machine(threads=1)
    info["mpi4py"] = mpi4py.__version__
    info["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    info["ranks"] = p
    return {"machine": info, "rows": rows}


def allreduce_table(rows: list[dict]) -> str:
    """The measured rows as a Markdown table, with each call's time over the raw mpi4py call's
    for the same array."""
    raw = {(r["dtype"], r["count"]): r["ms"] for r in rows if r["impl"] == "mpi4py"}
    header = ["dtype", "values", "MB", "call", "ms", "algbw GB/s", "busbw GB/s", "× mpi4py"]
    lines = [
        [
            r["dtype"],
            f"{r['count']:,}",
            f"{r['bytes'] / 1e6:g}",
            r["impl"],
            f"{r['ms']:.3f}",
            f"{r['algbw_gb_per_s']:.2f}",
            f"{r['busbw_gb_per_s']:.2f}",
            f"{r['ms'] / raw[r['dtype'], r['count']]:.2f}",
        ]
        for r in rows
    ]
    return common.markdown_table(header, lines, left=4)


def mpiexec_path() -> str | None:
    """The mpiexec next to this Python (the `mpich` wheel's), else the one on PATH."""
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def run_allreduce(args: argparse.Namespace) -> int:
    mpiexec = mpiexec_path()
    if mpiexec is None:
        print("no mpiexec: pip install 'tinynorm[distributed]'", file=sys.stderr)
        return 2
    spec = {
        "sizes": list(QUICK_SIZES if args.quick else SIZES),
        "dtypes": list(DTYPES),
        "repeat": 3 if args.quick else args.repeat,
    }
    command = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "mpi4py"]
    command += [os.path.abspath(__file__), "allreduce-child", json.dumps(spec)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=600
    )
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        return done.returncode
    result = json.loads(done.stdout.strip().splitlines()[-1])
    info = result["machine"]
    print(common.describe(info))
    print(
        f"mpi4py {info['mpi4py']}, {info['mpi']}; {info['ranks']} ranks, 1 thread each; median "
        f"of {spec['repeat']} (slowest rank each), after {WARMUP} warm-up calls\n"
    )
    print(allreduce_table(result["rows"]))
    if args.json:
        common.write_json(args.json, info, result["rows"], **spec)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("allreduce", "model", "allreduce-child"))
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)  # allreduce-child's JSON
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls (median)")
    parser.add_argument("--quick", action="store_true", help="tiny arrays, 3 repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.what == "model":
        return run_model(args)
    if args.what == "allreduce":
        return run_allreduce(args)
    result = allreduce_child(json.loads(args.spec))
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
