"""CPU speed of the norm layers: forward + backward against PyTorch and a parallel copy.

    python bench/norm_cpu.py [--threads 2] [--repeat 20] [--quick] [--json PATH]

For BatchNorm2d, LayerNorm, GroupNorm and InstanceNorm2d (float32) at each shape, one row:
the median time of forward + backward through the tinynorm layer (autograd included), the
same for PyTorch's CPU layer when torch is installed (never a dependency), their ratio, and
the bandwidth achieved from the minimal bytes moved — forward reads x and writes y, backward
reads x and dy and writes dx: 5 arrays — as a % of what a parallel copy (read + write, Numba
prange) reaches on the same array in the same run. Every implementation runs on `--threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per row (median)")
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    return parser.parse_args(argv)


ARGS = parse_args()
for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402  (thread counts must be set before these imports)
from numba import njit, prange  # noqa: E402

import tinynorm as tn  # noqa: E402
from tinynorm import nn  # noqa: E402

try:
    import torch

    torch.set_num_threads(ARGS.threads)
except ImportError:
    torch = None

SHAPES = [(8, 16, 28, 28)] if ARGS.quick else [(64, 32, 28, 28), (128, 64, 56, 56)]
REPEAT = 3 if ARGS.quick else ARGS.repeat


def layers(C: int, shape):
    """(name, tinynorm layer, torch layer or None) for each variant."""
    make = [
        ("BatchNorm2d", lambda m: m.BatchNorm2d(C)),
        ("LayerNorm", lambda m: m.LayerNorm(shape[1:])),
        ("GroupNorm(8)", lambda m: m.GroupNorm(8, C)),
        ("InstanceNorm2d", lambda m: m.InstanceNorm2d(C, affine=True)),
    ]
    return [(name, f(nn), f(torch.nn) if torch else None) for name, f in make]


def median_time(fn, repeat: int) -> float:
    fn()  # warm-up (and Numba compilation)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@njit(parallel=True, cache=True)
def parallel_copy(src, dst):
    for i in prange(src.size):
        dst[i] = src[i]


def machine() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": ARGS.threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": __import__("numba").__version__,
        "torch": torch.__version__ if torch else None,
    }


def main() -> int:
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        x_np = rng.standard_normal(shape).astype(np.float32)
        dy_np = rng.standard_normal(shape).astype(np.float32)
        flat, out = x_np.reshape(-1), np.empty(x_np.size, np.float32)
        copy_s = median_time(lambda flat=flat, out=out: parallel_copy(flat, out), REPEAT)
        copy_gbs = 2 * x_np.nbytes / copy_s / 1e9
        for name, ours, theirs in layers(shape[1], shape):
            x = tn.tensor(x_np, requires_grad=True)
            dy = tn.tensor(dy_np)

            def run_ours(ours=ours, x=x, dy=dy):
                x.grad = None
                ours(x).backward(dy)

            t_ours = median_time(run_ours, REPEAT)
            row = {
                "layer": name,
                "shape": list(shape),
                "tinynorm_ms": 1e3 * t_ours,
                "gb_per_s": 5 * x_np.nbytes / t_ours / 1e9,
                "copy_gb_per_s": copy_gbs,
            }
            row["copy_pct"] = 100 * row["gb_per_s"] / copy_gbs
            if theirs is not None:
                xt = torch.tensor(x_np, requires_grad=True)
                dyt = torch.tensor(dy_np)

                def run_theirs(theirs=theirs, xt=xt, dyt=dyt):
                    xt.grad = None
                    theirs(xt).backward(dyt)

                t_theirs = median_time(run_theirs, REPEAT)
                row["torch_ms"] = 1e3 * t_theirs
                row["ratio_to_torch"] = t_ours / t_theirs
            rows.append(row)
    print_table(rows)
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=1)
    return 0


def print_table(rows) -> None:
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads; "
        f"numpy {info['numpy']}, numba {info['numba']}, torch {info['torch']}"
    )
    print("| layer | shape | tinynorm ms | torch ms | ratio to torch | GB/s | % of copy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        torch_ms = f"{r['torch_ms']:.2f}" if "torch_ms" in r else "—"
        ratio = f"{r['ratio_to_torch']:.2f}" if "ratio_to_torch" in r else "—"
        print(
            f"| {r['layer']} | {tuple(r['shape'])} | {r['tinynorm_ms']:.2f} | {torch_ms} | "
            f"{ratio} | {r['gb_per_s']:.1f} | {r['copy_pct']:.0f}% |"
        )


if __name__ == "__main__":
    sys.exit(main())
