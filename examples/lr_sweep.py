"""Higher learning rates with batch norm? (SPEC §6.5, seeds 001-003): a learning-rate sweep.

    python -m tinynorm.examples.lr_sweep [--quick] [--lrs 0.01,0.1,1] [--examples N] [--out DIR]

The claim (seeds 001-003): "BN allows higher learning rates (less danger of exploding/vanishing
gradients)". The argument (seed 002): a batch-normalized layer is invariant to the scale of its
weights, BN(Wu) = BN((aW)u), and the gradient with respect to aW is 1/a times that with respect
to W, so a large step that grows the weights makes the following steps smaller.

The model is the main job's CNN (`examples/mnist.py`, `build_model`): conv 5×5 → norm → ReLU →
max-pool, twice, then a linear classifier, with BatchNorm2d ("with BN") or nothing ("without
BN"). For each learning rate of a log-spaced grid (`--lrs`, default 0.01 to 30 in half-decades)
both networks are trained on the same number of examples (`--examples`), in the same batches
(`--batch-size`, one seeded shuffle per epoch), from the same initial weights, by plain SGD at a
constant learning rate. No momentum (`--momentum 0`): the step is then exactly the learning rate
times the gradient, so the learning rate at which a network breaks is the size of the step that
breaks it, not an effect of momentum's accumulated velocity (which multiplies the long-run step
by 1 / (1 - momentum)). The test accuracy is measured in eval mode (BN with its running
statistics).

Three ways a run can fail, each recorded:
- diverged at step k: the loss at step k was not finite (NaN or inf; training stops there), or
  the mean training loss over the last tenth of the steps ended above DIVERGED_LOSS = 2·ln 10
  ≈ 4.6, twice the loss of a uniform guess over the ten classes, k then being the first step
  whose loss exceeded it. A diverged model is still tested (NaN outputs all predict class 0).
- ReLUs dead: not diverged, but on the last training batch a ReLU layer was 0 for every unit
  and every example. The layers above it then see a constant (every image gets the same class)
  and no gradient passes it, so it stays off. One large step that pushes every input of a ReLU
  layer below zero does this, with or without BN (with BN, its shift β takes the step).
- neither, but a low test accuracy.
A learning rate "trains" a network if its test accuracy reaches TRAINED_ACCURACY = 0.8 (chance is
0.1; one epoch of mnist-lite at a good learning rate gives about 0.95). Each run also records its
peak training loss, which shows the blow-up that precedes a death.

Outputs, in `--out` (written atomically): `lr_sweep.csv` (one row per network and learning rate:
steps trained, test accuracy, mean training loss over the last tenth of those steps, peak
training loss, whether and at which step it diverged, whether its ReLUs died, seconds, examples
per second), `lr_sweep.md` (the settings and a table: learning rates down, the two networks
across) and `lr_sweep.png` (test accuracy against learning rate, log scale, diverged runs marked
×, dead ones ○; if matplotlib is installed). The last line printed is `largest learning rate
that trains (test accuracy >= 0.8): without BN a, with BN b; smallest that diverges: without BN
c, with BN d` (`none` where no learning rate of the sweep qualifies).

Measured (seed 0, batch 64, 10,000 examples; test accuracy without / with BN; 2026-11-23): at
width 16 (the full run's), lr 0.1 0.960 / 0.959 and lr 0.3 0.087 / 0.930; with BN, lr 1, 3 and
10 fall to chance (0.087) and lr 30 and 100 go NaN (at steps 15 and 12). At width 8, lr 0.2
0.862 / 0.928 and from lr 0.3 on both fall to chance. In the runs traced, every failure starts
at step 2: the first update, taken on the initial weights' gradients, overshoots (a loss of 10
to 10^3 at the next step), and the next updates push a ReLU layer off or the weights towards
overflow. Without BN the loss stays finite up to lr 10 (its ReLUs die first). So BN moves the
edge up by a factor of about 3 at width 16, not at width 8: with one seed, near the edge, a
single run decides.

Cost, measured on 2 CPU cores with nothing else running (2026-11-23): at width 8 about 3,000 to
5,500 examples/s per run, at width 16 about 2,300, and 2-3 s to test on 10,000 images (other jobs
on the same cores made it up to 20 times slower). So `--quick` (2,000 examples per run, width 8,
sixteen runs, 1,000 test images) takes about 11 seconds with start-up, and the full run (10,000
examples per run, width 16, sixteen runs, each tested on 10,000 images) about 2 minutes.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
from tinynorm import nn
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
    train_steps,
    write_outputs,
)
from .mnist import build_model

NETS = {"none": "without BN", "bn": "with BN"}  # build_model's kind: label
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
DIVERGED_LOSS = 2 * math.log(10)  # twice the loss of a uniform guess over ten classes
TRAINED_ACCURACY = 0.8  # a learning rate "trains" a network whose test accuracy reaches this
QUICK = dict(examples=2_000, width=8, train_limit=10_000, test_limit=1_000)
FULL = dict(examples=10_000, width=16, train_limit=None, test_limit=None)


def learning_rates(text: str) -> list[float]:
    """`--lrs`: a comma-separated list of positive numbers, e.g. "0.01,0.1,1"."""
    try:
        lrs = [float(item) for item in text.split(",")]
    except ValueError:
        lrs = []
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of positive numbers, e.g. 0.01,0.1,1"
        )
    return lrs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "lr_sweep",
        "A learning-rate sweep of the main job's CNN with and without batch norm, by plain SGD: "
        "where does each network stop training, and where does it diverge?",
        "a short run: 2,000 examples per run, width 8, 1,000 test images",
    )
    p.add_argument(
        "--lrs",
        type=learning_rates,
        default=list(LRS),
        help=f"comma-separated learning rates (default: {','.join(f'{lr:g}' for lr in LRS)})",
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument(
        "--examples",
        type=int,
        help="training examples per run (default: 10,000, one epoch of mnist-lite)",
    )
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    p.add_argument(
        "--momentum", type=float, default=0.0, help="SGD momentum (default: 0, plain SGD)"
    )
    args = parse_experiment(p, argv, QUICK, FULL)
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (batch norm needs two examples to normalize)")
    if args.examples < args.batch_size or args.width < 1 or not 0 <= args.momentum < 1:
        p.error("--examples must be at least --batch-size, --width >= 1 and 0 <= --momentum < 1")
    return args


def divergence_step(losses: list[float]) -> int | None:
    """The step (from 1) at which a run diverged: its non-finite loss, or, if its final loss is
    above DIVERGED_LOSS, the first step above it; None if the run did not diverge."""
    if not math.isfinite(losses[-1]):
        return len(losses)
    if final_loss(losses) > DIVERGED_LOSS:
        return next(step for step, loss in enumerate(losses, 1) if loss > DIVERGED_LOSS)
    return None


def watch_relus(model: nn.Sequential) -> dict[int, bool]:
    """For each ReLU of `model` (by position), whether its latest output in training mode had a
    positive value, kept up to date by forward hooks. False: the layer was off for every unit
    and every example of the batch, so it passed no gradient and will stay off."""
    alive: dict[int, bool] = {}

    def record(index: int, module: nn.Module, inputs, output: tn.Tensor) -> None:
        if module.training:
            alive[index] = bool((output.numpy() > 0).any())

    for index, layer in enumerate(model):
        if isinstance(layer, nn.ReLU):
            layer.register_forward_hook(functools.partial(record, index))
    return alive


def train_one(
    args: argparse.Namespace, norm: str, lr: float, train: Data, test: Data, bar: tqdm
) -> dict:
    """Train one network at learning rate `lr` on `args.examples` examples, stopping at a
    non-finite loss; its CSV row."""
    steps = args.examples // args.batch_size
    tn.manual_seed(args.seed)  # the same initial weights for every run
    model = build_model(norm, steps, args.width)
    optimizer = tn.optim.SGD(list(model.parameters()), lr=lr, momentum=args.momentum)
    loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=args.seed
    )
    alive = watch_relus(model)
    # a diverging run overflows: its loss says so, NumPy need not warn
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        losses, seconds = train_steps(model, optimizer, loader, steps, bar)
        accuracy = evaluate(model, test)
        diverged_at = divergence_step(losses)
        dead = diverged_at is None and not all(alive.values())
    bar.set_postfix_str(f"{NETS[norm]} lr {lr:g}: {outcome(accuracy, diverged_at, dead)}")
    return {
        "norm": norm,
        "lr": lr,
        "steps": len(losses),
        "test_accuracy": round(accuracy, 6),
        "final_train_loss": float(f"{final_loss(losses):.6g}"),
        "peak_train_loss": float(f"{np.nanmax(losses):.6g}"),
        "diverged": diverged_at is not None,
        "diverged_at_step": diverged_at,  # None: an empty CSV field
        "relu_dead": dead,
        "train_seconds": round(seconds, 3),
        "examples_per_second": round(len(losses) * args.batch_size / seconds, 1),
    }


def outcome(accuracy: float, diverged_at: int | None, dead: bool) -> str:
    """A run's result in a few words: its accuracy, and whether it diverged or its ReLUs died."""
    if diverged_at is not None:
        return f"diverged at step {diverged_at} ({accuracy:.4f})"
    return f"{accuracy:.4f}, ReLUs dead" if dead else f"{accuracy:.4f}"


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}; learning rates {', '.join(f'{lr:g}' for lr in args.lrs)}; "
        f"SGD momentum {args.momentum:g}, constant learning rate; batch {args.batch_size}; "
        f"{args.examples:,} training examples per run; seed {args.seed}"
    )


def trained_and_diverged(rows: list[dict], norm: str) -> tuple[str, str]:
    """The largest learning rate that trains network `norm` and the smallest that diverges it,
    as text ("none" where no learning rate of the sweep does)."""
    runs = [r for r in rows if r["norm"] == norm]
    trained = [r["lr"] for r in runs if r["test_accuracy"] >= TRAINED_ACCURACY]
    diverged = [r["lr"] for r in runs if r["diverged"]]
    return (
        f"{max(trained):g}" if trained else "none",
        f"{min(diverged):g}" if diverged else "none",
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings and the definitions, then the outcome by learning rate (rows) and network
    (columns)."""
    cells = {
        (r["norm"], r["lr"]): outcome(r["test_accuracy"], r["diverged_at_step"], r["relu_dead"])
        for r in rows
    }
    seconds = sum(r["train_seconds"] for r in rows)
    table = markdown_table(
        ["learning rate", *(f"test accuracy {label}" for label in NETS.values())],
        [[f"{lr:g}", *(cells[norm, lr] for norm in NETS)] for lr in args.lrs],
    )
    return "\n".join(
        [
            "# Learning-rate sweep with and without batch norm, with tinynorm",
            "",
            f"{settings(args)}. Both networks start from the same weights and see the same "
            f"batches. Data: MNIST, {data}. Tested in eval mode (BN with its running "
            f"statistics). Diverged: a non-finite loss (training stopped there), or a mean "
            f"loss over the last tenth of the steps above 2·ln 10 = {DIVERGED_LOSS:.2f} (the "
            f"step is then the first above it). ReLUs dead: on the last training batch a ReLU "
            f"layer was 0 for every unit and every example, so the layers above it see a "
            f"constant and no gradient passes it: it stays off. Training time: {seconds:.0f} s "
            f"in all.",
            "",
            table,
            "",
            summary_line(args, rows) + ".",
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy against learning rate (log scale), one line per network, diverged runs
    marked ×, dead ones ○; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for norm, label in NETS.items():
        runs = [r for r in rows if r["norm"] == norm]
        lrs, accuracy = [r["lr"] for r in runs], [r["test_accuracy"] for r in runs]
        (line,) = ax.plot(lrs, accuracy, ".-", label=label)
        for key, marker, name in (("diverged", "x", "diverged"), ("relu_dead", "o", "ReLUs dead")):
            marked = [r for r in runs if r[key]]
            ax.plot(
                [r["lr"] for r in marked],
                [r["test_accuracy"] for r in marked],
                linestyle="none",
                marker=marker,
                markersize=10,
                color=line.get_color(),  # given, so the markers take no colour from the cycle
                markerfacecolor="none",
                label=f"{label}, {name}" if marked else None,
            )
    ax.axhline(TRAINED_ACCURACY, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set(
        xlabel=f"learning rate (SGD, momentum {args.momentum:g})",
        ylabel="test accuracy (inference statistics)",
        title=f"{args.examples:,} training examples per run, batch {args.batch_size}",
        ylim=(0, 1),
    )
    ax.legend(loc="best", fontsize="small")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=args.batch_size)
    print(f"{settings(args)}; networks {', '.join(NETS.values())}")
    steps = args.examples // args.batch_size
    total = len(NETS) * len(args.lrs) * steps * args.batch_size
    with tqdm(total=total, desc="examples", unit="ex", dynamic_ncols=True) as bar:
        rows = [train_one(args, norm, lr, train, test, bar) for lr in args.lrs for norm in NETS]
    markdown = summary_markdown(args, rows, data)
    write_outputs(Path(args.out), "lr_sweep", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: per network, the largest learning rate that trains it and the
    smallest that diverges it."""
    found = {norm: trained_and_diverged(rows, norm) for norm in NETS}
    return (
        f"largest learning rate that trains (test accuracy >= {TRAINED_ACCURACY:g}): "
        + ", ".join(f"{NETS[n]} {found[n][0]}" for n in NETS)
        + "; smallest that diverges: "
        + ", ".join(f"{NETS[n]} {found[n][1]}" for n in NETS)
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
