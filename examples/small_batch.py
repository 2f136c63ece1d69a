"""Batch renormalization at small batches (SPEC §6.2, seed 000): BN vs BRN vs GN at batch 2, 4, 64.

    python -m tinynorm.examples.brn_small_batch [--quick] [--examples 20000] [--out DIR]

The claim (Ioffe 2017, via seed 000): batch norm degrades when its mini-batches are small,
because a model trained on the statistics of a few examples is tested with the running averages
of those statistics, and the two disagree; batch renormalization trains with the batch
statistics corrected towards the running averages, so it holds up.

The model is the main job's CNN (`examples/mnist.py`, `build_model`): conv 5×5 → norm → ReLU →
max-pool, twice, then a linear classifier; the norm is BatchNorm2d (bn), BatchRenorm2d (brn) or
GroupNorm with 4 groups (gn, which uses no batch statistics: the control). Each norm is trained
at each batch size (default 2, 4 and the reference 64) on the same number of examples
(`--examples`), in the same order (one seeded shuffle per epoch, cut into batches of each size),
from the same initial weights, by SGD with momentum 0.9. The learning rate follows the linear
scaling rule, lr = `--lr` × batch / 64, so that every run moves its weights about as far per
example: the runs differ in their normalization and in how many examples each statistic sees,
not in how much they train. The test accuracy is measured in eval mode: BN and BRN use their
running mean and variance (inference statistics), as they would when deployed.

Batch renorm's limits follow the main job's schedule, the paper's (plain BN for 5k steps, then
rmax 1 → 3 by 40k and dmax 0 → 5 by 25k steps) scaled to the run's length (1/8, 1, 5/8 of its
steps): the paper's step counts are for runs of 130k+ steps, and constant limits from the first
step would correct towards running averages that are still at their initial values (0 and 1).

Outputs, in `--out` (written atomically): `brn_small_batch.csv` (one row per norm and batch
size, as in `norm_variants`, whose `train_one` runs each: steps, learning rate, test accuracy,
mean training loss over the last tenth of the steps, seconds per epoch, examples per second,
diverged), `brn_small_batch.md` (the settings and a table of the accuracies)
and `brn_small_batch.png` (grouped bars, if matplotlib is installed). The last line printed is
`test accuracy (inference statistics): batch 2: BN 0.xxxx, BRN 0.xxxx, GN 0.xxxx; batch 4: ...`.

Cost, measured on 2 idle CPU cores (2026-11-23): at width 16 about 1,100-1,300 examples/s at
batch 2 and 1,500-2,300 at batch 4 or 64. So `--quick` (2,000 examples per run, width 8, 1,000
test images) takes about 12 seconds, and the full run (20,000 examples per run, width 16, nine
runs, each tested on 10,000 images) about 2.5 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinynorm.files import atomic_write

from .common import (
    experiment_parser,
    load_data,
    markdown_table,
    parse_experiment,
    run_experiment,
    write_outputs,
)
from .norm_variants import REFERENCE_BATCH, train_one

NORMS = {"bn": "BN", "brn": "BRN", "gn": "GN"}
QUICK = dict(examples=2_000, width=8, train_limit=10_000, test_limit=1_000)
FULL = dict(examples=20_000, width=16, train_limit=None, test_limit=None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "brn_small_batch",
        "BatchNorm vs BatchRenorm vs GroupNorm in the main job's CNN at small "
        "batch sizes, each trained on the same examples, tested with inference statistics.",
        "a short run: 2,000 examples per run, width 8, 1,000 test images",
    )
    p.add_argument(
        "--examples", type=int, help="training examples per run (default: 20,000, two epochs)"
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[2, 4, REFERENCE_BATCH],
        help="batch sizes to compare (default: 2 4 64)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=0.05,
        help=f"learning rate at batch {REFERENCE_BATCH}, scaled linearly (default: 0.05)",
    )
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    args = parse_experiment(p, argv, QUICK, FULL)
    if min(args.batch_sizes) < 2:
        p.error("--batch-sizes must be >= 2 (batch norm needs two examples to normalize)")
    if args.examples < max(args.batch_sizes) or args.width < 1 or not args.lr > 0:
        p.error("--examples must be at least the largest batch, --width >= 1 and --lr > 0")
    return args


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}; batch sizes {', '.join(map(str, args.batch_sizes))}; "
        f"{args.examples:,} training examples per run; SGD momentum 0.9, lr {args.lr:g} × "
        f"batch / {REFERENCE_BATCH}; seed {args.seed}"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str, seconds: float) -> str:
    """The settings, then test accuracy by norm (rows) and batch size (columns)."""
    accuracy = {(r["norm"], r["batch_size"]): r["test_accuracy"] for r in rows}
    table = markdown_table(
        ["test accuracy", *(f"batch {b}" for b in args.batch_sizes)],
        [[NORMS[n], *(f"{accuracy[n, b]:.4f}" for b in args.batch_sizes)] for n in NORMS],
    )
    return "\n".join(
        [
            "# Batch renormalization at small batches, with tinynorm",
            "",
            f"{settings(args)}. Data: MNIST, {data}. Tested in eval mode (BN and BRN with "
            f"their running statistics). BRN: the paper's rmax/dmax schedule scaled to each "
            f"run's steps; GN: 4 groups. Runs (training, testing): {seconds:.0f} s.",
            "",
            table,
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Grouped bars, test accuracy per batch size and norm; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    accuracy = {(r["norm"], r["batch_size"]): r["test_accuracy"] for r in rows}
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(args.batch_sizes))
    width = 0.8 / len(NORMS)
    for i, (norm, label) in enumerate(NORMS.items()):
        values = [accuracy[norm, b] for b in args.batch_sizes]
        ax.bar(positions + (i - (len(NORMS) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(positions, [str(b) for b in args.batch_sizes])
    ax.set(
        xlabel="batch size",
        ylabel="test accuracy (inference statistics)",
        title=f"{args.examples:,} training examples per run",
        ylim=(0, 1.15),  # room above the bars for the legend
    )
    ax.legend(loc="upper center", ncols=len(NORMS))
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=max(args.batch_sizes))
    print(f"{settings(args)}; norms {', '.join(NORMS.values())}")
    total = len(NORMS) * sum(args.examples // b * b for b in args.batch_sizes)
    began = time.perf_counter()
    with tqdm(total=total, desc="examples", unit="ex", dynamic_ncols=True) as bar:
        rows = [
            train_one(args, norm, batch_size, args.examples // batch_size, train, test, bar)
            for batch_size in args.batch_sizes
            for norm in NORMS
        ]
    markdown = summary_markdown(args, rows, data, time.perf_counter() - began)
    write_outputs(Path(args.out), "brn_small_batch", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: every accuracy, grouped by batch size."""
    accuracy = {(r["norm"], r["batch_size"]): r["test_accuracy"] for r in rows}
    groups = (
        f"batch {b}: " + ", ".join(f"{label} {accuracy[n, b]:.4f}" for n, label in NORMS.items())
        for b in args.batch_sizes
    )
    return "test accuracy (inference statistics): " + "; ".join(groups)


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
