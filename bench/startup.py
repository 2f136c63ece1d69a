"""Start-up of the main job: seconds from launching `python -m tinynorm.examples.mnist` to its
first training batch done, with Numba's on-disk kernel cache cold and warm.

    python bench/startup.py [--norm bn] [--threads 2] [--repeat 3] [--batch-size 64]
                            [--data-dir DIR] [--quick] [--json PATH]

Each run launches the example, unchanged, as a subprocess that trains one batch for one
epoch and then evaluates one test image:

    python -m tinynorm.examples.mnist --norm bn --epochs 1 --batch-size 64 --train-limit 64
        --test-limit 1 --data-dir DIR

with NUMBA_CACHE_DIR set to a fresh, empty temporary directory ("cold": every kernel compiles
and is written to the cache), then once more with the same directory ("warm": every kernel
loads from the cache). Two times per run, nothing subtracted (both include the interpreter's
start, the imports and reading the data): "first batch", when the example's progress bar on
its stderr reports the batch done ("| 1/1 ["), and "exit", when the process ends. The data
are the bundled mnist-lite by default, so no download or cache lookup enters the figures.
Only Numba's cache starts cold: Python's bytecode caches and the OS page cache stay as they are.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

FIRST_BATCH = re.compile(rb"\| 1/1 \[")  # tqdm's bar once the one training batch is done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, repeat=3)
    parser.add_argument("--norm", default="bn", help="the example's --norm (default bn)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="the example's --batch-size (default 64)"
    )
    parser.add_argument(
        "--data-dir", help="the example's --data-dir (default: the bundled mnist-lite)"
    )
    return parser.parse_args(argv)


ARGS = parse_args()
common.set_threads(ARGS.threads)  # the example inherits the thread counts from os.environ

import numba  # noqa: E402, F401  (after set_threads; its version goes into the machine line)

from tinynorm.data.datasets import BUNDLED_DIR  # noqa: E402

REPEAT = 1 if ARGS.quick else ARGS.repeat
COMMAND = [
    sys.executable,
    "-m",
    "tinynorm.examples.mnist",
    "--norm",
    ARGS.norm,
    "--epochs",
    "1",
    "--batch-size",
    str(ARGS.batch_size),
    "--train-limit",
    str(ARGS.batch_size),
    "--test-limit",
    "1",
    "--data-dir",
    str(ARGS.data_dir or BUNDLED_DIR),
]


def launch(cache_dir: Path) -> dict[str, float]:
    """Run the example once with `cache_dir` as Numba's cache: seconds to its first batch
    done and to its exit."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    child = subprocess.Popen(COMMAND, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output, first_batch = b"", None
    while chunk := child.stdout.read1():
        output += chunk
        if first_batch is None and FIRST_BATCH.search(output):
            first_batch = time.perf_counter() - start
    returncode = child.wait()
    exit_s = time.perf_counter() - start
    if returncode != 0 or first_batch is None:
        raise RuntimeError(
            f"{' '.join(COMMAND)} exited with {returncode}"
            + ("" if first_batch else " before its progress bar showed the batch done")
            + ":\n"
            + output.decode(errors="replace")[-2000:]
        )
    return {"first_batch_s": first_batch, "exit_s": exit_s}


def cache_size(cache_dir: Path) -> dict[str, float]:
    """What Numba wrote to `cache_dir`: kernel functions (an index file each), their
    compiled versions (one per signature) and megabytes."""
    files = [f for f in cache_dir.rglob("*") if f.is_file()]
    return {
        "cached_functions": sum(f.suffix == ".nbi" for f in files),
        "cached_versions": sum(f.suffix == ".nbc" for f in files),
        "cache_mb": sum(f.stat().st_size for f in files) / 1e6,
    }


def main() -> int:
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="tinynorm-startup-") as tmp:
        for i in range(REPEAT):
            cache_dir = Path(tmp) / f"run{i + 1}"
            cache_dir.mkdir()
            runs["cold"].append(launch(cache_dir))
            written = cache_size(cache_dir)
            runs["warm"].append(launch(cache_dir))
    rows = [
        {
            "start": start,
            "first_batch_s": statistics.median(r["first_batch_s"] for r in measured),
            "exit_s": statistics.median(r["exit_s"] for r in measured),
            "runs": measured,
        }
        for start, measured in runs.items()
    ]
    for row in rows:
        row["ratio_to_cold"] = row["first_batch_s"] / rows[0]["first_batch_s"]

    info = common.machine(ARGS.threads)
    print(common.describe(info))
    print(f"\ncommand: {' '.join(COMMAND)}")
    print(
        f"NUMBA_CACHE_DIR: {tmp}/run<i> (fresh for each cold run, removed at the end); "
        f"a cold run wrote {written['cached_functions']} kernel functions in "
        f"{written['cached_versions']} compiled versions, {written['cache_mb']:.1f} MB\n"
    )
    print(
        common.markdown_table(
            ["start", "first batch s", "ratio to cold", "exit s"],
            [
                [
                    r["start"],
                    common.cell(r["first_batch_s"]),
                    common.cell(r["ratio_to_cold"]),
                    common.cell(r["exit_s"]),
                ]
                for r in rows
            ],
        )
    )
    print(f"\n(median of {REPEAT} cold and {REPEAT} warm runs)")
    if ARGS.json:
        common.write_json(
            ARGS.json,
            info,
            rows,
            command=COMMAND,
            numba_cache_dir=tmp,
            repeat=REPEAT,
            quick=ARGS.quick,
            **written,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
