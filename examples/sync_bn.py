"""Small per-process batches, as data-parallel training meets them: local BN vs SyncBN vs GN.

    python -m tinynorm.examples.sync_bn [--quick] [--ranks 4] [--batch-size 2] [--seeds 0 1 2]

The setting of seed 000's small-batch problem as practitioners meet it: a global batch spread
over several processes, each with a tiny share. With `--ranks` 4 × `--batch-size` 2, every
rank's local batch norm computes its statistics from 2 examples (2×28×28 values at the first
norm, 2×14×14 at the second), while SyncBatchNorm pools the 8 examples of all ranks, and
GroupNorm (4 groups) needs no batch at all. The claim: local BN suffers at such per-process
batches and SyncBN restores what batch norm gives on the global batch.

Each setting trains the main job's CNN (`examples/mnist.py`'s `build_model`) data-parallel
(`nn.parallel.DistributedDataParallel`, `data.DistributedSampler`) for the same number of steps
(`--steps`), on the same global batches, from the same initial weights per seed, by SGD with
momentum 0.9 at lr `--lr` × global batch / 64 (the linear scaling rule). It is tested in eval
mode: BN uses its running estimates (rank 0's, which DDP broadcasts before every step).
Each rank runs on one thread; the ranks are processes started by mpiexec (MPI, the
`distributed` extra), which this program launches itself.

Outputs, in `--out` (written atomically by rank 0): `sync_bn.csv` (one row per setting and
seed: test accuracy, mean training loss over the last tenth of the steps, seconds),
`sync_bn.md` (the settings, mean ± std over the seeds, the verdict by `verdicts.py`'s rule) and
`sync_bn.png` (bars with the standard deviation, if matplotlib is installed). The last line
printed is `test accuracy (mean ± std over N seeds): local BN ..., SyncBN ..., GN ...`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import tinynorm as tn
import tinynorm.distributed as dist
from tinynorm import nn
from tinynorm.data import DataLoader, DistributedSampler

from .common import (
    evaluate,
    experiment_parser,
    final_loss,
    load_data,
    markdown_table,
    parse_experiment,
    run_distributed,
    train_step,
    write_outputs,
)
from .mnist import build_model
from .verdicts import Comparison, mean_std, per_seed, run_seeds, sample_std

SETTINGS = {"bn": "local BN", "syncbn": "SyncBN", "gn": "GN"}
QUICK = dict(steps=40, width=8, seeds=[0, 1], ranks=2, train_limit=2_000, test_limit=500)
FULL = dict(steps=1250, width=16, ranks=4, train_limit=None, test_limit=None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "sync_bn",
        "Local BatchNorm vs SyncBatchNorm vs GroupNorm when each of several processes holds a "
        "tiny share of the global batch (data-parallel over MPI).",
        "a short run: 2 ranks, 40 steps, width 8, 2 seeds, 500 test images",
    )
    p.add_argument("--ranks", type=int, help="processes (default: 4)")
    p.add_argument("--batch-size", type=int, default=2, help="examples per rank (default: 2)")
    p.add_argument("--steps", type=int, help="training steps per run (default: 1250)")
    p.add_argument(
        "--lr", type=float, default=0.02, help="learning rate at a global batch of 64 (0.02)"
    )
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a rank of mpiexec
    args = parse_experiment(p, argv, QUICK, FULL)
    if min(args.ranks, args.batch_size, args.steps, args.width) < 1 or not args.lr > 0:
        p.error("--ranks, --batch-size, --steps and --width must be >= 1 and --lr > 0")
    return args


def launch(args: argparse.Namespace, argv: list[str]) -> None:
    """Run this program's ranks under `mpiexec -n args.ranks python -m mpi4py` (the mpiexec
    next to this Python first: the `mpich` wheel's); their output passes through."""
    here = str(Path(sys.executable).parent)
    mpiexec = shutil.which("mpiexec", path=here) or shutil.which("mpiexec")
    if mpiexec is None:
        raise RuntimeError("no mpiexec: pip install 'tinynorm[distributed]' (mpi4py + mpich)")
    program = [sys.executable, "-m", "mpi4py", "-m", "tinynorm.examples.sync_bn", "--worker"]
    ranks = ["-n", str(args.ranks)]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run([mpiexec, *ranks, *program, *argv, "--ranks", str(args.ranks)], env=env)
    if done.returncode:
        raise RuntimeError(f"the ranks ended with exit status {done.returncode}")


def train_one(args, setting: str, seed: int, train, test, world) -> dict:
    """One data-parallel run of `setting` from the weights of `seed`; its CSV row."""
    tn.manual_seed(seed)
    model = build_model("gn" if setting == "gn" else "bn", args.steps, args.width)
    if setting == "syncbn":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    replica = nn.parallel.DistributedDataParallel(model, world)
    global_batch = args.batch_size * world.size
    lr = args.lr * global_batch / 64
    optimizer = tn.optim.SGD(list(model.parameters()), lr=lr, momentum=0.9)
    sampler = DistributedSampler(len(train[1]), world.size, world.rank, seed=seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    losses, began = [], time.perf_counter()
    for x, y in epochs(sampler, loader):
        losses.append(train_step(replica, optimizer, x, y))
        if len(losses) == args.steps or not np.isfinite(losses[-1]):
            break
    seconds = time.perf_counter() - began
    loss = float(world.all_reduce(np.array([final_loss(losses)]))[0]) / world.size
    return {
        "setting": setting,
        "seed": seed,
        "ranks": world.size,
        "batch_per_rank": args.batch_size,
        "steps": len(losses),
        "lr": lr,
        "test_accuracy": round(evaluate(model, test, group=world), 6),
        "final_train_loss": round(loss, 6),
        "seconds": round(seconds, 2),
    }


def epochs(sampler: DistributedSampler, loader: DataLoader):
    """The loader's batches, epoch after epoch, the sampler set to each epoch, forever."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def comparison(rows: list[dict]) -> Comparison:
    """The claim: SyncBN beats local BN in test accuracy, by one point or more."""
    acc = {s: per_seed(rows, "test_accuracy", setting=s) for s in ("syncbn", "bn")}
    return Comparison("SyncBN beats local BN", acc["syncbn"], acc["bn"], 0.01, ("SyncBN", "BN"))


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    table = markdown_table(
        ["setting", "test accuracy", "final train loss", "seconds per run"],
        (
            [
                SETTINGS[s],
                mean_std(per_seed(rows, "test_accuracy", setting=s)),
                mean_std(per_seed(rows, "final_train_loss", setting=s)),
                f"{np.mean([r['seconds'] for r in rows if r['setting'] == s]):.1f}",
            ]
            for s in SETTINGS
        ),
    )
    return (
        f"# Local BN vs SyncBN vs GN, {args.ranks} ranks × batch {args.batch_size}\n\n"
        f"{data}; CNN width {args.width}; {args.steps} steps per run; SGD momentum 0.9, "
        f"lr {args.lr:g} × {args.ranks * args.batch_size} / 64; seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in rows})))}; mean ± std over the seeds."
        f"\n\n{table}\n\n{comparison(rows).line()}\n"
    )


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    acc = [[r["test_accuracy"] for r in rows if r["setting"] == s] for s in SETTINGS]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(SETTINGS.values()), [np.mean(a) for a in acc], yerr=[sample_std(a) for a in acc])
    ax.set_ylabel("test accuracy (eval mode)")
    ax.set_ylim(min(min(a) for a in acc) - 0.02, 1)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=args.ranks * args.batch_size)
    world = dist.group()
    if world.size != args.ranks:
        raise RuntimeError(f"started on {world.size} ranks, expected --ranks {args.ranks}")

    def run_seed(seed: int) -> list[dict]:
        rows = []
        for setting in SETTINGS:
            rows.append(train_one(args, setting, seed, train, test, world))
            r = rows[-1]
            print(f"seed {seed} {SETTINGS[setting]}: {r['test_accuracy']:.4f} ({r['seconds']} s)")
        return rows

    rows = run_seeds(args.seeds, run_seed, lambda rows: [comparison(rows)], args.more_seeds)
    if world.rank == 0:
        markdown = summary_markdown(args, rows, data)
        write_outputs(Path(args.out), "sync_bn", rows, markdown, lambda p: plot(rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    per = (
        f"{name} {mean_std(per_seed(rows, 'test_accuracy', setting=s))}"
        for s, name in SETTINGS.items()
    )
    seeds = len({r["seed"] for r in rows})
    return f"test accuracy (mean ± std over {seeds} seeds): " + ", ".join(per)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return run_distributed(argv, parse_args, run, summary_line)
    try:
        launch(args, argv)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
