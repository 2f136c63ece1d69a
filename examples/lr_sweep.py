"""Higher learning rates with batch norm? (SPEC §6.5, seeds 001-003): a learning-rate sweep.

    python -m tinynorm.examples.lr_sweep [--quick] [--lrs 0.01,0.1,1] [--examples N]
        [--seeds 0 1 2] [--dataset mnist|fashion-mnist] [--out results/lr_sweep/<dataset>]

The claim (seeds 001-003): "BN allows higher learning rates (less danger of exploding/vanishing
gradients)". The argument (seed 002): a batch-normalized layer is invariant to the scale of its
weights, BN(Wu) = BN((aW)u), and the gradient with respect to aW is 1/a times that with respect
to W, so a large step that grows the weights makes the following steps smaller.

The model is the main job's CNN (`examples/mnist.py`, `build_model`): conv 5×5 → norm → ReLU →
max-pool, twice, then a linear classifier, with BatchNorm2d ("with BN") or nothing ("without
BN"). For each seed (`--seeds`, default 0 1 2) and each learning rate of a log-spaced grid
(`--lrs`, default 0.01 to 3 in half-decades) both networks are trained on the same number of
examples (`--examples`), in the same batches (`--batch-size`, one seeded shuffle per epoch),
from the same initial weights (the seed's), by plain SGD at a constant learning rate. No
momentum (`--momentum 0`): the step is then exactly the learning rate times the gradient, so the
learning rate at which a network breaks is the size of the step that breaks it, not an effect
of momentum's accumulated velocity (which multiplies the long-run step by 1 / (1 - momentum)).
The test accuracy is measured in eval mode (BN with its running statistics). The grid stops at
3: in a seed-0 run to 30 (MNIST, 2026-11-23) both networks failed from lr 1 on, and lr 10 and 30
only added NaN divergences, at a quarter of the run's time (overflowing arithmetic is slow).

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
A learning rate "trains" a network if its test accuracy reaches TRAINED_ACCURACY: 0.8 on MNIST,
0.7 on Fashion-MNIST, whose accuracies run about ten points lower (chance is 0.1 on both; a
failed run ends near it, one epoch at a good learning rate gives about 0.95 on MNIST). On
Fashion-MNIST (seed 0, width 16, 2,000 test images) lr 0.01 gave 0.617 / 0.765 without / with
BN and lr 0.3 0.739 / 0.726: both networks still train at 0.3 there, a few points above the
line, where on MNIST the plain one dies. Each run also records its peak training loss, which
shows the blow-up that precedes a death.

The claims, each a `verdicts.Comparison` over the seeds (gain = difference of the means, noise
= the sum of the two standard deviations; reproduced where gain > noise, not reproduced where
gain + noise < the effect, else inconclusive; 5 seeds where the gain is within 2 std):
- BN tolerates a higher learning rate: per seed, log10 of the largest learning rate of the grid
  that trains the network (half a decade below the smallest where none does); effect 0.5, one
  step of the grid (a factor of about 3);
- BN learns faster at a low learning rate: the test accuracy at the grid's smallest; effect
  0.01 (one point).

Outputs, in `--out` (written atomically): `lr_sweep.csv` (one row per seed, network and learning
rate: steps trained, test accuracy, mean training loss over the last tenth of those steps, peak
training loss, whether and at which step it diverged, whether its ReLUs died, seconds, examples
per second), `lr_sweep.md` (the settings; a table of test accuracy, mean ± std over the seeds,
learning rates down, the two networks across, with how many seeds diverged or died; per seed,
the largest learning rate that trains each network and the smallest that diverges it; the
verdicts) and `lr_sweep.png` (test accuracy against learning rate, log scale, mean ± std error
bars; marked × where a seed diverged, ○ where a seed's ReLUs died; if matplotlib is installed).
The last line printed is `largest learning rate that trains (test accuracy >= 0.8), seeds 0, 1,
2: without BN a, b, c; with BN d, e, f; higher learning rate: <verdict>; faster at lr 0.01:
<verdict>` (`none` where no learning rate of the sweep trains).

Measured (seed 0, batch 64, 10,000 examples; test accuracy without / with BN; 2026-11-23): at
width 16 (the full run's), lr 0.1 0.960 / 0.959 and lr 0.3 0.087 / 0.930; with BN, lr 1, 3 and
10 fall to chance (0.087) and lr 30 and 100 go NaN (at steps 15 and 12). At width 8, lr 0.2
0.862 / 0.928 and from lr 0.3 on both fall to chance. In the runs traced, every failure starts
at step 2: the first update, taken on the initial weights' gradients, overshoots (a loss of 10
to 10^3 at the next step), and the next updates push a ReLU layer off or the weights towards
overflow. Without BN the loss stays finite up to lr 10 (its ReLUs die first). So BN moves the
edge up by a factor of about 3 at width 16, not at width 8: near the edge a single run decides,
hence the seeds.

Cost, measured on 2 CPU cores with nothing else running (2026-11-23): at width 8 about 3,000 to
5,500 examples/s per run, at width 16 about 2,300 (a run that blows up to large finite values is
slower: lr 30 without BN took 25 s), and 2-3 s to test on 10,000 images (other jobs on the same
cores made it up to 20 times slower). A seed of the full run (10,000 examples per run, width 16,
twelve runs, each tested on 10,000 images) takes about 85 s, so the default three seeds about
4.5 minutes (7.5 where the verdicts need seeds 3 and 4 too), the same on Fashion-MNIST.
`--quick` (2,000 examples per run, width 8, two seeds, 1,000 test images) takes about 20
seconds (32 s with other jobs on the cores).
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
    line_style,
    load_data,
    markdown_table,
    parse_experiment,
    plot_mean_std,
    run_experiment,
    train_steps,
    write_outputs,
)
from .mnist import build_model
from .verdicts import Comparison, mean_std, per_seed, run_seeds, verdict_table

NETS = {"none": "without BN", "bn": "with BN"}  # build_model's kind: label
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
DIVERGED_LOSS = 2 * math.log(10)  # twice the loss of a uniform guess over ten classes
TRAINED_ACCURACY = {"mnist": 0.8, "fashion-mnist": 0.7}  # a learning rate that "trains"
LR_EFFECT = 0.5  # in log10 of the learning rate: one step of the grid
ACCURACY_EFFECT = 0.01  # one point of test accuracy
QUICK = dict(examples=2_000, width=8, seeds=[0, 1], train_limit=10_000, test_limit=1_000)
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
        "a short run: seeds 0 and 1, 2,000 examples per run, width 8, 1,000 test images",
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
        help="training examples per run (default: 10,000, one epoch of the training images)",
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
    args: argparse.Namespace, seed: int, norm: str, lr: float, train: Data, test: Data, bar: tqdm
) -> dict:
    """Train one network from `seed`'s weights and batches at learning rate `lr` on
    `args.examples` examples, stopping at a non-finite loss; its CSV row."""
    steps = args.examples // args.batch_size
    tn.manual_seed(seed)  # the same initial weights for every run of the seed
    model = build_model(norm, steps, args.width)
    optimizer = tn.optim.SGD(list(model.parameters()), lr=lr, momentum=args.momentum)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=seed)
    alive = watch_relus(model)
    # a diverging run overflows: its loss says so, NumPy need not warn
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        losses, seconds = train_steps(model, optimizer, loader, steps, bar)
        accuracy = evaluate(model, test)
        diverged_at = divergence_step(losses)
        dead = diverged_at is None and not all(alive.values())
    bar.set_postfix_str(f"{NETS[norm]} lr {lr:g}: {outcome(accuracy, diverged_at, dead)}")
    return {
        "seed": seed,
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
        f"{args.examples:,} training examples per run"
    )


def seeds_of(rows: list[dict]) -> list[int]:
    """The seeds that `rows` hold, in order."""
    return sorted({r["seed"] for r in rows})


def edges(
    rows: list[dict], norm: str, seed: int, threshold: float
) -> tuple[float | None, float | None]:
    """For one network and seed: the largest learning rate whose test accuracy reaches
    `threshold` and the smallest that diverges (None where none does)."""
    runs = [r for r in rows if r["norm"] == norm and r["seed"] == seed]
    trained = [r["lr"] for r in runs if r["test_accuracy"] >= threshold]
    diverged = [r["lr"] for r in runs if r["diverged"]]
    return max(trained, default=None), min(diverged, default=None)


def text(lr: float | None) -> str:
    """A learning rate as the tables print it: "0.3", or "none" for None."""
    return "none" if lr is None else f"{lr:g}"


def comparisons(args: argparse.Namespace, rows: list[dict]) -> dict[str, Comparison]:
    """The claims, by a short name, each judged over the seeds of `rows`."""
    threshold, low = TRAINED_ACCURACY[args.dataset], min(args.lrs)

    def log_largest(norm: str) -> list[float]:  # none trains: half a decade below the grid
        largest = (edges(rows, norm, seed, threshold)[0] for seed in seeds_of(rows))
        return [math.log10(low) - 0.5 if lr is None else math.log10(lr) for lr in largest]

    names = tuple(NETS[n] for n in ("bn", "none"))
    return {
        "higher learning rate": Comparison(
            "BN tolerates a higher learning rate: log10 of the largest that trains (test "
            f"accuracy ≥ {threshold:g})",
            log_largest("bn"),
            log_largest("none"),
            LR_EFFECT,
            names,
            digits=2,
        ),
        f"faster at lr {low:g}": Comparison(
            f"BN learns faster at a low learning rate: test accuracy at lr {low:g}",
            per_seed(rows, "test_accuracy", norm="bn", lr=low),
            per_seed(rows, "test_accuracy", norm="none", lr=low),
            ACCURACY_EFFECT,
            names,
        ),
    }


def cell(runs: list[dict]) -> str:
    """One network at one learning rate over the seeds: mean ± std of the test accuracy, and
    how many seeds diverged or died."""
    failed = [
        f"{count} of {len(runs)} {word}"
        for key, word in (("diverged", "diverged"), ("relu_dead", "ReLUs dead"))
        if (count := sum(r[key] for r in runs))
    ]
    note = f" ({', '.join(failed)})" if failed else ""
    return mean_std([r["test_accuracy"] for r in runs]) + note


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings and the definitions, the outcome by learning rate (rows) and network
    (columns), the edges per seed, and the verdicts."""
    threshold, seeds = TRAINED_ACCURACY[args.dataset], seeds_of(rows)
    accuracy = markdown_table(
        ["learning rate", *(f"test accuracy {label}" for label in NETS.values())],
        (
            [f"{lr:g}", *(cell([r for r in rows if (r["norm"], r["lr"]) == (n, lr)]) for n in NETS)]
            for lr in args.lrs
        ),
    )
    per_seed_edges = markdown_table(
        [
            "seed",
            *(f"largest that trains, {label}" for label in NETS.values()),
            *(f"smallest that diverges, {label}" for label in NETS.values()),
        ],
        (
            [seed, *(text(edges(rows, n, seed, threshold)[i]) for i in (0, 1) for n in NETS)]
            for seed in seeds
        ),
    )
    seconds = sum(r["train_seconds"] for r in rows)
    return "\n".join(
        [
            "# Learning-rate sweep with and without batch norm, with tinynorm",
            "",
            f"{settings(args)}. Seeds {', '.join(map(str, seeds))}: mean ± std over the seeds; "
            f"in each seed both networks start from the same weights and see the same batches. "
            f"Data: {data}. Tested in eval mode (BN with its running statistics). Trains: a "
            f"test accuracy of at least {threshold:g}. Diverged: a non-finite loss (training "
            f"stopped there), or a mean loss over the last tenth of the steps above 2·ln 10 = "
            f"{DIVERGED_LOSS:.2f}. ReLUs dead: on the last training batch a ReLU layer was 0 for "
            f"every unit and every example, so the layers above it see a constant and no "
            f"gradient passes it: it stays off. Training time: {seconds:.0f} s in all.",
            "",
            accuracy,
            "",
            per_seed_edges,
            "",
            "Verdicts (reproduced: gain > noise, the sum of the two standard deviations; not "
            "reproduced: gain + noise < the effect; else inconclusive; a network that no "
            "learning rate trains counts as half a decade below the grid):",
            "",
            verdict_table(list(comparisons(args, rows).values())),
            "",
            summary_line(args, rows) + ".",
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy against learning rate (log scale), mean ± std over the seeds, one line per
    network, marked × where a seed diverged and ○ where a seed's ReLUs died; False without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for i, (norm, label) in enumerate(NETS.items()):
        runs = [[r for r in rows if (r["norm"], r["lr"]) == (norm, lr)] for lr in args.lrs]
        accuracy = [[r["test_accuracy"] for r in at_lr] for at_lr in runs]
        plot_mean_std(ax, args.lrs, accuracy, i, label)
        for key, marker, name in (("diverged", "x", "diverged"), ("relu_dead", "o", "ReLUs dead")):
            marked = [j for j, at_lr in enumerate(runs) if any(r[key] for r in at_lr)]
            ax.plot(
                [args.lrs[j] for j in marked],
                [np.mean(accuracy[j]) for j in marked],
                linestyle="none",
                marker=marker,
                markersize=14 - 4 * i,  # concentric where both networks fail alike
                color=line_style(i)["color"],  # the line's: none from the cycle
                markerfacecolor="none",
                label=f"{label}, {name} (≥ 1 seed)" if marked else None,
            )
    ax.axhline(TRAINED_ACCURACY[args.dataset], color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    seeds = len(seeds_of(rows))
    ax.set(
        xlabel=f"learning rate (SGD, momentum {args.momentum:g})",
        ylabel="test accuracy (inference statistics)",
        title=f"{args.examples:,} training examples per run, batch {args.batch_size}; "
        f"mean ± std over {seeds} seed{'s' * (seeds > 1)}",
        ylim=(0, 1),
    )
    ax.legend(loc="best", fontsize="small")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=args.batch_size)
    print(f"{settings(args)}; networks {', '.join(NETS.values())}")
    examples = len(NETS) * len(args.lrs) * (args.examples // args.batch_size) * args.batch_size

    def run_seed(seed: int) -> list[dict]:
        with tqdm(total=examples, desc=f"seed {seed}", unit="ex", dynamic_ncols=True) as bar:
            return [
                train_one(args, seed, norm, lr, train, test, bar)
                for lr in args.lrs
                for norm in NETS
            ]

    rows = run_seeds(
        args.seeds, run_seed, lambda r: list(comparisons(args, r).values()), args.more_seeds
    )
    markdown = summary_markdown(args, rows, data)
    write_outputs(Path(args.out), "lr_sweep", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: per network, the largest learning rate that trains it in each
    seed, and the verdicts."""
    threshold, seeds = TRAINED_ACCURACY[args.dataset], seeds_of(rows)
    largest = {
        n: ", ".join(text(edges(rows, n, seed, threshold)[0]) for seed in seeds) for n in NETS
    }
    verdicts = "; ".join(f"{name}: {c.verdict}" for name, c in comparisons(args, rows).items())
    return (
        f"largest learning rate that trains (test accuracy >= {threshold:g}), seeds "
        f"{', '.join(map(str, seeds))}: "
        + "; ".join(f"{NETS[n]} {largest[n]}" for n in NETS)
        + f"; {verdicts}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
