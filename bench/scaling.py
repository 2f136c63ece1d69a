"""The main job from 1 to 2 ranks on this machine: images per second and scaling efficiency.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/scaling.py [--repeat 2] [--json P]

Runs `python -m tinynorm.examples.mnist` (BatchNorm, width 16, mnist-lite's 10,000 training
images, 2 epochs, 500 test images) in four configurations, each in its own processes, the
configurations alternated `--repeat` times:

    1 rank, 1 thread,  batch 64        the unit: one core's throughput
    1 rank, 2 threads, batch 64        the main job as it runs by default on 2 cores
    2 ranks x 1 thread, batch 64 each  weak scaling (global batch 128), SyncBN
    2 ranks x 1 thread, batch 32 each  strong scaling (global batch 64, one process's steps), SyncBN

The time of a configuration is the median over the repetitions of the second epoch's seconds
from the main job's `--log` (the first includes compiling what Numba's cache lacks; an epoch's
seconds include testing on 500 images). Images/s = 10,000 / that time; the efficiency on c
cores (ranks × threads) = images/s ÷ (c × the 1-rank, 1-thread images/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {  # name: (ranks, threads per rank, batch per rank)
    "1 rank x 1 thread, batch 64": (1, 1, 64),
    "1 rank x 2 threads, batch 64": (1, 2, 64),
    "2 ranks x 1 thread, batch 64 (weak)": (2, 1, 64),
    "2 ranks x 1 thread, batch 32 (strong)": (2, 1, 32),
}
IMAGES = 10_000


def epoch_seconds(ranks: int, threads: int, batch: int) -> float:
    """The second epoch's seconds of one run of the main job in this configuration."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.json"
        job = ["-m", "tinynorm.examples.mnist", "--offline", "--epochs", "2", "--test-limit"]
        job += ["500", "--batch-size", str(batch), "--log", str(log)]
        command = [sys.executable, *job]
        if ranks > 1:
            here = str(Path(sys.executable).parent)
            mpiexec = shutil.which("mpiexec", path=here) or shutil.which("mpiexec")
            command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", *job]
            command += ["--distributed", "--sync-bn"]
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, capture_output=True)
        return json.loads(log.read_text())[1]["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeat):
        for name, config in CONFIGS.items():
            times[name].append(epoch_seconds(*config))
    unit = IMAGES / statistics.median(times[next(iter(CONFIGS))])
    print("| configuration | epoch s (runs) | images/s | efficiency |\n|---|---|---|---|")
    rows = []
    for name, (ranks, threads, _) in CONFIGS.items():
        rate = IMAGES / statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(
            f"| {name} | {statistics.median(times[name]):.2f} ({runs}) | {rate:.0f} | "
            f"{rate / (ranks * threads * unit):.2f} |"
        )
        rows.append({"configuration": name, "seconds": times[name], "images_per_s": rate})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
