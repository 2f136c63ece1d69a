"""Does a training step's time depend on what the script imported first? (It should not.)

    python bench/import_order.py [--rounds 5] [--steps 20] [--batch-size 128] [--json PATH]

Each measurement is a fresh process that trains the main job's CNN (`build_model("bn")`,
SGD with Nesterov momentum) on a fixed random batch, after importing, in one of three ways:

- `numpy first`: `import numpy` and then `import tinynorm`, as most scripts do;
- `tinynorm first`: `import tinynorm` and then NumPy;
- `numpy first, BLAS on 2 threads`: as the first, then NumPy's BLAS put back on 2 threads
  (threadpoolctl): what tinynorm did before it owned the threads, to compare in the same run;
- `tinynorm first, BLAS on 2 threads, timeout 4`: the same with OPENBLAS_THREAD_TIMEOUT=4 in
  the environment (idle BLAS workers sleep at once): the old best case, when tinynorm was
  imported before NumPy.

The three run alternately, `--rounds` times each; a process reports the median of `--steps`
timed steps after 3 warm-up steps, and the table gives the median over processes and its
ratio to `tinynorm first`. Run it alone on the machine, with the host's OpenBLAS overrides
unset as a user's machine has none: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from tinynorm.files import atomic_write

WAYS = (
    "numpy first",
    "tinynorm first",
    "numpy first, BLAS on 2 threads",
    "tinynorm first, BLAS on 2 threads, timeout 4",
)

CHILD = """
import sys, time, json
way, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if way.startswith("numpy"):
    import numpy as np
    import tinynorm as tn
else:
    import tinynorm as tn
    import numpy as np
if "2 threads" in way:
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=2, user_api="blas")
import tinynorm.nn.functional as F
from tinynorm.examples.mnist import build_model

tn.manual_seed(0)
model = build_model("bn", total_steps=1000)
opt = tn.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
rng = np.random.default_rng(0)
x = tn.tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32))
y = tn.tensor(rng.integers(0, 10, batch))
times = []
for i in range(3 + steps):
    began = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    loss.item()
    times.append(time.perf_counter() - began)
print(json.dumps(sorted(times[3:])[steps // 2]))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="processes per way (median)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process (median)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def measure(way: str, steps: int, batch: int) -> float:
    """One fresh process's median step time in seconds."""
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4") if "timeout" in way else None
    done = subprocess.run(
        [sys.executable, "-c", CHILD, way, str(steps), str(batch)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            times[way].append(measure(way, args.steps, args.batch_size))
    base = statistics.median(times["tinynorm first"])
    print(f"training step, main job's CNN (bn), batch {args.batch_size}; median of processes\n")
    print("| imports | ms per step (median) | range | × tinynorm first |")
    print("| --- | ---: | ---: | ---: |")
    for way in WAYS:
        ms = [1000 * t for t in times[way]]
        print(
            f"| {way} | {statistics.median(ms):.1f} | {min(ms):.1f}-{max(ms):.1f} "
            f"| {statistics.median(times[way]) / base:.2f} |"
        )
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "seconds": times}, f, indent=1)


if __name__ == "__main__":
    main()
