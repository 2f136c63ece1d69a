"""The normalization variants side by side (SPEC §6.4, seed 004): every norm at batch 2 to 128.

    python -m tinynorm.examples.norm_variants [--quick] [--norms bn,ln,gn] [--batch-sizes 2,8]

The claim (seed 004, a survey of normalization techniques): group norm and layer norm are
stable across batch sizes, while batch norm degrades at small batches, where the statistics of
a few examples are noisy and the running averages used at test time disagree with them.

The model is the main job's CNN (`examples/mnist.py`, `build_model`): conv 5×5 → norm → ReLU →
max-pool, twice, then a linear classifier, with every norm layer of the main job (`--norms`,
default all of `mnist.NORMS`, "none" included). Each norm is trained at each batch size
(`--batch-sizes`, default 2, 8, 32, 128) for `--epochs` epochs of the training images, in
batches that drop the last partial one (so `--epochs` × ⌊images / batch⌋ steps), from the same
initial weights, with the same example order (one seeded shuffle per epoch, cut into batches of
each size), by SGD with momentum 0.9 and the linear scaling rule lr = `--lr` × batch / 64, as in
`brn_small_batch`; `--lr` defaults to the main job's 0.02 (at 0.05, batch 128's lr of 0.1 with
momentum 0.9 collapsed GN and mean-only BN to chance in one epoch: measured, 2026-11-23). The
test accuracy is measured in eval mode: batch-statistic norms use their
running estimates (inference statistics), as they would when deployed. The time per epoch is the
training time alone (no evaluation); one untimed step of each norm first takes Numba's
compilation (or the load from its cache) out of it. A run whose training loss becomes NaN or
infinite stops there, is flagged as diverged, and is still tested; the others carry on.

Outputs, in `--out` (written atomically): `norm_variants.csv` (one row per norm and batch size:
steps taken, learning rate, test accuracy, mean training loss over the last tenth of the steps,
training seconds per epoch (for a diverged run, from the steps it took), examples per second,
diverged 0/1), `norm_variants.md` (the settings, a table of the accuracies with their spread
over the batch sizes, and a table of the seconds per epoch) and `norm_variants.png` (accuracy and
time per epoch against batch size, if matplotlib is installed). The last line printed is
`test accuracy (inference statistics) at batch 2 / 8 / 32 / 128: none 0.xxxx / ... / 0.xxxx,
bn ..., ...`, every norm in `--norms` order.

Cost, measured on 2 idle CPU cores (2026-11-23), training examples per second over the norms:
at width 8 about 1,800-3,100 at batch 2 and 3,000-6,000 at batch 8 to 128; at width 16 about
1,200-2,000 at batch 2 and 2,100-3,000 at batch 8 to 128; testing 4,000-7,000 images/s at width
16. So `--quick` (512 training and 500 test images, width 8, all 44 runs) takes about 13 seconds;
it is a smoke run (4 steps at batch 128), too short to test the claim. The full run (all the
training images: offline, mnist-lite's 10,000; one epoch; width 16; 44 runs, each tested on
10,000 images) trains on 440,000 examples in about 3.5 minutes and tests for about 1.5: about
5 minutes in all. Timings are wall-clock: another busy process on the machine inflates them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
from tinynorm.data import DataLoader
from tinynorm.files import atomic_write

from .common import (
    Data,
    evaluate,
    experiment_parser,
    final_loss,
    load_data,
    markdown_table,
    parse_experiment,
    run_experiment,
    train_step,
    train_steps,
    write_outputs,
)
from .mnist import NORM_HELP, NORMS, build_model

REFERENCE_BATCH = 64  # the batch size at which the learning rate is --lr
QUICK = dict(width=8, train_limit=512, test_limit=500)
FULL = dict(width=16, train_limit=None, test_limit=None)
MARKERS = "os^vDPX*h<>"  # with the 10 default colors, 11 norms stay apart


def norm_list(text: str) -> list[str]:
    """`--norms`: comma-separated names from `mnist.NORMS`, in the order given, without repeats."""
    norms = [name.strip() for name in text.split(",")]
    for name in norms:
        if name not in NORMS:
            raise argparse.ArgumentTypeError(
                f"unknown norm '{name}' (choose from {', '.join(NORMS)})"
            )
    return list(dict.fromkeys(norms))


def batch_size_list(text: str) -> list[int]:
    """`--batch-sizes`: comma-separated positive integers, sorted, without repeats."""
    items = text.split(",")
    for item in items:
        if not item.strip().isdecimal() or int(item) < 1:
            raise argparse.ArgumentTypeError(f"'{item}' is not a positive integer")
    return sorted({int(item) for item in items})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "norm_variants",
        "Every normalization layer of the main job's CNN at batch sizes 2 to 128: test "
        "accuracy with inference statistics, and training time per epoch.",
        "a short run: 512 training and 500 test images, width 8, every norm and batch size",
    )
    p.add_argument(
        "--norms",
        type=norm_list,
        default=",".join(NORMS),
        metavar="NAMES",
        help=f"comma-separated norms to compare (default: all), from {NORM_HELP}",
    )
    p.add_argument(
        "--batch-sizes",
        type=batch_size_list,
        default="2,8,32,128",
        metavar="SIZES",
        help="comma-separated batch sizes (default: 2,8,32,128)",
    )
    p.add_argument("--epochs", type=int, default=1, help="training epochs per run (default: 1)")
    p.add_argument(
        "--lr",
        type=float,
        default=0.02,
        help=f"learning rate at batch {REFERENCE_BATCH}, scaled linearly (default: 0.02, the "
        "main job's)",
    )
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    args = parse_experiment(p, argv, QUICK, FULL)
    if args.epochs < 1 or args.width < 1 or not args.lr > 0:
        p.error("--epochs and --width must be >= 1 and --lr > 0")
    return args


def warm_up(norms: list[str], width: int, train: Data) -> None:
    """One untimed training step of each norm's model on two examples, so that Numba's
    compilation (or its cache load) is not counted in the first run's time."""
    for norm in norms:
        model = build_model(norm, 1, width)
        optimizer = tn.optim.SGD(list(model.parameters()), lr=0.0)
        train_step(model, optimizer, *next(iter(DataLoader(train, batch_size=2))))


def train_one(
    args: argparse.Namespace,
    norm: str,
    batch_size: int,
    steps: int,
    train: Data,
    test: Data,
    bar: tqdm,
) -> dict:
    """Train one model (`norm`, width `args.width`, the weights of `args.seed`) for `steps`
    batches of `batch_size` by SGD with momentum 0.9 at lr `args.lr` × batch / 64, stopping at
    a non-finite loss, and test it; its CSV row. `brn_small_batch` runs the same."""
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, seed=args.seed)
    lr = args.lr * batch_size / REFERENCE_BATCH
    tn.manual_seed(args.seed)  # the same initial weights for every run
    model = build_model(norm, steps, args.width)
    optimizer = tn.optim.SGD(list(model.parameters()), lr=lr, momentum=0.9)
    losses, seconds = train_steps(model, optimizer, loader, steps, bar)
    accuracy = evaluate(model, test)
    bar.set_postfix_str(f"{norm} batch {batch_size}: {accuracy:.4f}")
    return {
        "norm": norm,
        "batch_size": batch_size,
        "steps": len(losses),
        "lr": lr,
        "test_accuracy": round(accuracy, 6),
        "final_train_loss": round(final_loss(losses), 6),
        "train_seconds_per_epoch": round(seconds * len(loader) / len(losses), 3),
        "examples_per_second": round(len(losses) * batch_size / seconds, 1),
        "diverged": int(not math.isfinite(losses[-1])),
    }


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}; norms {', '.join(args.norms)}; batch sizes "
        f"{', '.join(map(str, args.batch_sizes))}; {args.epochs} epoch(s) per run; SGD momentum "
        f"0.9, lr {args.lr:g} × batch / {REFERENCE_BATCH}; seed {args.seed}"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings, then test accuracy and seconds per epoch by norm (rows) and batch size
    (columns); a diverged run's accuracy is marked."""
    run = {(r["norm"], r["batch_size"]): r for r in rows}
    batches = [f"batch {b}" for b in args.batch_sizes]

    def accuracy_cell(row: dict) -> str:
        return f"{row['test_accuracy']:.4f}" + (" (diverged)" if row["diverged"] else "")

    accuracy = markdown_table(
        ["test accuracy", *batches, "spread (max − min)"],
        [
            [
                norm,
                *(accuracy_cell(run[norm, b]) for b in args.batch_sizes),
                f"{np.ptp([run[norm, b]['test_accuracy'] for b in args.batch_sizes]):.4f}",
            ]
            for norm in args.norms
        ],
    )
    seconds = markdown_table(
        ["seconds per epoch", *batches],
        [
            [norm, *(f"{run[norm, b]['train_seconds_per_epoch']:.2f}" for b in args.batch_sizes)]
            for norm in args.norms
        ],
    )
    total = sum(r["steps"] * r["batch_size"] / r["examples_per_second"] for r in rows)
    return "\n".join(
        [
            "# Normalization variants side by side, with tinynorm",
            "",
            f"{settings(args)}. Data: MNIST, {data}. Tested in eval mode (batch-statistic norms "
            f"with their running estimates). Training time: {total:.0f} s in all.",
            "",
            accuracy,
            "",
            "Training time per epoch (no evaluation), seconds:",
            "",
            seconds,
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy and seconds per epoch against batch size (log2 axis), one line per norm;
    False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    run = {(r["norm"], r["batch_size"]): r for r in rows}
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    accuracy_ax, seconds_ax = fig.subplots(1, 2)
    for i, norm in enumerate(args.norms):
        runs = [run[norm, b] for b in args.batch_sizes]
        style = dict(marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", label=norm)
        accuracy_ax.plot(args.batch_sizes, [r["test_accuracy"] for r in runs], **style)
        seconds_ax.plot(args.batch_sizes, [r["train_seconds_per_epoch"] for r in runs], **style)
    for ax in (accuracy_ax, seconds_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    accuracy_ax.set(ylabel="test accuracy (inference statistics)")
    accuracy_ax.set_ylim(top=1)  # the bottom follows the data: the norms differ by points
    seconds_ax.set(ylabel="training seconds per epoch")
    seconds_ax.set_ylim(bottom=0)
    fig.legend(*accuracy_ax.get_legend_handles_labels(), loc="outside right upper")
    fig.suptitle(f"Normalization variants: CNN width {args.width}, {args.epochs} epoch(s) per run")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=max(args.batch_sizes))
    print(settings(args))
    warm_up(args.norms, args.width, train)
    images = len(train[1])
    total = len(args.norms) * args.epochs * sum(images // b * b for b in args.batch_sizes)
    with tqdm(total=total, desc="examples", unit="ex", dynamic_ncols=True) as bar:
        rows = [
            train_one(args, norm, b, args.epochs * (images // b), train, test, bar)
            for b in args.batch_sizes
            for norm in args.norms
        ]
    markdown = summary_markdown(args, rows, data)
    write_outputs(Path(args.out), "norm_variants", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: each norm's accuracies, in batch-size order."""
    accuracy = {(r["norm"], r["batch_size"]): r["test_accuracy"] for r in rows}
    per_norm = (
        f"{norm} " + " / ".join(f"{accuracy[norm, b]:.4f}" for b in args.batch_sizes)
        for norm in args.norms
    )
    return (
        "test accuracy (inference statistics) at batch "
        f"{' / '.join(map(str, args.batch_sizes))}: " + ", ".join(per_norm)
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
