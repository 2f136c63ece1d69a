"""Ioffe & Szegedy (2015), Figure 1: a sigmoid network on MNIST with and without batch norm.

    python -m tinynorm.examples.bn_figure1 [--quick] [--steps 50000] [--out results/bn_figure1]

The network of the paper's section 4.1: 784 inputs, three fully connected hidden layers of 100
sigmoid units and a 10-way softmax, trained by plain SGD on mini-batches of 60 examples:

    without BN:  h_l = σ(W_l h_{l-1} + b_l)            σ(z) = 1 / (1 + e^(-z)), l = 1, 2, 3
    with BN:     h_l = σ(BN(W_l h_{l-1} + b_l))        BN(z) = γ·(z - μ_B)/sqrt(σ²_B + ε) + β
    output:      p = softmax(W_4 h_3 + b_4), loss = -log p_label (mean over the batch)
    update:      θ ← θ - η·∂loss/∂θ                     (no momentum, no weight decay)

μ_B and σ²_B are each unit's mean and variance over the mini-batch (the running estimates are
used for the test accuracy, in eval mode). Both networks start from the same weights and see the
same batches in the same order: batch norm is the only difference.

Initialization. The paper says only that W is "initialized to small random Gaussian values". We
use W ~ N(0, 0.01²) and b = 0 (`--init-std 0.01`): the classic "small" Gaussian (AlexNet's and
many tutorials' 0.01·randn), a standard normal scaled by 0.01. This is the regime the paper's
argument is about: the sigmoid inputs of the deeper layers start near zero with a tiny spread,
the gradient reaching the lower layers is tiny (each layer multiplies it by σ' ≤ 1/4 and by
weights of 0.01), and every update moves the inputs of the layers above. An initialization
scaled to the layer's width narrows the gap. Measured on mnist-lite, 5,000 steps at lr 0.5,
full test set (test accuracy without / with BN; steps to reach 90%, without / with BN):

    --init-std 0.01   0.8730 / 0.9436   never / 1,500
    --init-std 0.05   0.9404 / 0.9449   1,000 / 500
    --init-std 0.1    0.9487 / 0.9465   1,000 / 500     (0.1 = 1/sqrt(fan_in) for 100 inputs)

Nor does the paper give the learning rate; we use 0.5 (`--lr`), a usual rate for plain SGD on a
sigmoid MLP, the same for both networks. At lr 1 (std 0.01, 5,000 steps, 2,000 test images) the
plain network did better (0.8955) and the BN one the same (0.9345).

What is recorded. Every `--eval-every` steps, the test accuracy of both networks; at every step,
through a `tinynorm.diagnostics.PercentileTracer` on the last hidden sigmoid, the 15th, 50th and
85th percentiles over the mini-batch of one unit's sigmoid input (`--unit`): W_3 h_2 + b_3
without BN, the BN output with it, as in the paper's panels (b) and (c). A percentile of 60
values is noisy, so each row of the CSV holds the mean of the per-batch percentiles over the
batches trained on since the previous row (row 0: the first batch, before any update).

Outputs, in `--out` (each written atomically, by `tinynorm.files.atomic_write`):
- `bn_figure1.csv`: step, the two test accuracies and the six percentiles;
- `bn_figure1.md`: the settings and a summary table (final and best accuracy, steps to 90% and
  95%, the percentiles early and late);
- `bn_figure1.png`: panels (a), (b), (c), if matplotlib is installed (`pip install
  'tinynorm[plot]'`); without it the program says so and writes the other two.
The last line printed is `final test accuracy: without BN 0.xxxx, with BN 0.xxxx`.

Data. MNIST as found by `tinynorm.data.MNIST` (offline: the bundled mnist-lite, 10,000 training
images, where the paper had 60,000: 50,000 steps of 60 are 300 passes over it). The full test
set (10,000 images) is used unless `--test-limit`.

Cost, measured on 2 CPU cores (AMD EPYC, 2026-11-23): a training step takes 0.9 ms without BN
and 1.8 ms with it (tracer included); with the evaluations, 250-320 steps per second for the two
networks together. So the default 50,000 steps (as in the paper) take about 3 minutes, and
`--quick` (2,000 steps, 2,000 test images) about 10 seconds with start-up.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.data import DataLoader
from tinynorm.diagnostics import PercentileTracer
from tinynorm.files import atomic_write

from .common import (
    check_finite_loss,
    check_interrupt,
    endless,
    evaluate,
    experiment_parser,
    load_data,
    parse_experiment,
    run_experiment,
    write_outputs,
)

SIZES = (784, 100, 100, 100, 10)  # input, three hidden layers, classes
PERCENTILES = (15, 50, 85)
NETS = ("without_bn", "with_bn")
LABELS = {"without_bn": "without BN", "with_bn": "with BN"}
THRESHOLDS = (0.90, 0.95)  # "steps to reach" in the summary
QUICK = dict(steps=2000, eval_every=100, train_limit=10_000, test_limit=2000)
FULL = dict(steps=50_000, eval_every=500, train_limit=None, test_limit=None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "bn_figure1",
        "Ioffe & Szegedy's Figure 1: test accuracy and the 15/50/85th percentiles "
        "of a sigmoid input over training, in a 3×100 sigmoid MLP with and without batch norm.",
        "a short run: 2,000 steps, evaluation every 100, the first 10,000 training and "
        "2,000 test images",
    )
    p.add_argument("--steps", type=int, help="training steps (default: 50,000 as in the paper)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: 500)")
    p.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (default: 0.5)")
    p.add_argument(
        "--init-std",
        type=float,
        default=0.01,
        help="standard deviation of the Gaussian initial weights (default: 0.01)",
    )
    p.add_argument("--batch-size", type=int, default=60, help="batch size (default: 60)")
    p.add_argument(
        "--unit",
        type=int,
        default=0,
        help="which of the last hidden layer's 100 sigmoids to trace (default: 0)",
    )
    args = parse_experiment(p, argv, QUICK, FULL)
    if args.steps < 1 or args.eval_every < 1:
        p.error("--steps and --eval-every must be >= 1")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (batch norm needs two examples to normalize)")
    if not (args.lr > 0 and args.init_std > 0):
        p.error("--lr and --init-std must be > 0")
    if not 0 <= args.unit < SIZES[3]:
        p.error(f"--unit must be in 0..{SIZES[3] - 1}")
    return args


# ---- the model --------------------------------------------------------------------------------
def gaussian_weights(std: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each layer: W ~ N(0, std²) of shape (out, in), b = 0."""
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0.0, std, (n_out, n_in)).astype(np.float32), np.zeros(n_out, np.float32))
        for n_in, n_out in itertools.pairwise(SIZES)
    ]


def build_mlp(weights: list[tuple[np.ndarray, np.ndarray]], batch_norm: bool) -> nn.Sequential:
    """Linear → [BatchNorm1d] → Sigmoid, three times, then Linear (the softmax is in the loss)."""
    layers: list[nn.Module] = []
    for i, (w, b) in enumerate(weights):
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.weight.data[...] = w
        linear.bias.data[...] = b
        layers.append(linear)
        if i < len(weights) - 1:  # a hidden layer
            if batch_norm:
                layers.append(nn.BatchNorm1d(w.shape[0]))
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def last_sigmoid(model: nn.Sequential) -> nn.Module:
    """The last hidden layer's Sigmoid: its input is what panels (b) and (c) show."""
    return [m for m in model if isinstance(m, nn.Sigmoid)][-1]


# ---- training ---------------------------------------------------------------------------------
def train(args: argparse.Namespace, train_data, test_data) -> tuple[list[dict], float]:
    """Train both networks in lockstep; returns the CSV rows and the training time in seconds."""
    weights = gaussian_weights(args.init_std, args.seed)
    models = {"without_bn": build_mlp(weights, False), "with_bn": build_mlp(weights, True)}
    optimizers = {k: tn.optim.SGD(list(m.parameters()), lr=args.lr) for k, m in models.items()}
    tracers = {
        k: PercentileTracer(last_sigmoid(m), PERCENTILES, which="input", index=args.unit)
        for k, m in models.items()
    }
    accuracy = {0: {k: evaluate(m, test_data, "cpu") for k, m in models.items()}}
    loader = DataLoader(
        train_data, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=args.seed
    )
    batches = endless(loader)
    began = time.perf_counter()
    bar = tqdm(range(1, args.steps + 1), desc="steps", unit="step", dynamic_ncols=True)
    for step in bar:
        x, y = next(batches)
        check_interrupt()
        for key, model in models.items():
            loss = F.cross_entropy(model(x), y)
            check_finite_loss(loss.item(), f"step {step} ({LABELS[key]})", args.lr)
            optimizers[key].zero_grad()
            loss.backward()
            optimizers[key].step()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy[step] = {k: evaluate(m, test_data, "cpu") for k, m in models.items()}
            bar.set_postfix({LABELS[k]: f"{a:.4f}" for k, a in accuracy[step].items()})
    seconds = time.perf_counter() - began
    for tracer in tracers.values():
        tracer.remove()
    return make_rows(accuracy, tracers), seconds


def make_rows(accuracy: dict[int, dict], tracers: dict[str, PercentileTracer]) -> list[dict]:
    """One row per evaluation. A tracer's step s is the forward pass after s updates; a row at
    step s > 0 averages the percentiles of steps [previous row's step, s), row 0 has step 0's."""
    rows, previous = [], 0
    for step, acc in accuracy.items():
        row = {"step": step}
        row.update({f"test_accuracy_{k}": round(a, 6) for k, a in acc.items()})
        for key, tracer in tracers.items():
            window = (tracer.steps >= previous) & (tracer.steps < max(step, 1))
            means = tracer.values[window].mean(axis=0)
            row.update({f"{key}_p{q}": round(float(v), 6) for q, v in zip(PERCENTILES, means)})
        rows.append(row)
        previous = step
    return rows


# ---- outputs ----------------------------------------------------------------------------------
def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"MLP {'-'.join(map(str, SIZES))} (sigmoid), W ~ N(0, {args.init_std:g}²), b = 0; "
        f"SGD lr {args.lr:g}, batch {args.batch_size}, {args.steps:,} steps, seed {args.seed}"
    )


def summarize(rows: list[dict], key: str) -> dict[str, str]:
    """One network's column of the summary table (`key`: "without_bn" or "with_bn")."""
    steps = [r["step"] for r in rows]
    accuracy = [r[f"test_accuracy_{key}"] for r in rows]
    p = {q: [r[f"{key}_p{q}"] for r in rows] for q in PERCENTILES}
    column = {
        "final test accuracy": f"{accuracy[-1]:.4f}",
        "best test accuracy": f"{max(accuracy):.4f}",
    }
    for threshold in THRESHOLDS:  # the first evaluation at or above it
        reached = [s for s, a in zip(steps, accuracy) if a >= threshold]
        column[f"steps to {threshold:.0%} test accuracy"] = (
            f"{reached[0]:,}" if reached else "not reached"
        )
    for i in (0, -1):
        column[f"sigmoid input p15 / p50 / p85 at step {steps[i]:,}"] = " / ".join(
            f"{p[q][i]:+.2f}" for q in PERCENTILES
        )
    column["median's range over training (max - min of p50)"] = f"{np.ptp(p[50]):.2f}"
    column["15th-85th spread, first / last row"] = " / ".join(
        f"{p[85][i] - p[15][i]:.2f}" for i in (0, -1)
    )
    return column


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str, seconds: float) -> str:
    """The settings, then a table: accuracy and the traced percentiles of both networks."""
    without, with_bn = (summarize(rows, key) for key in NETS)
    return "\n".join(
        [
            "# Ioffe & Szegedy, Figure 1, with tinynorm",
            "",
            f"{settings(args)}. Data: MNIST, {data}; evaluated every {args.eval_every:,} steps. "
            f"Traced: the input of sigmoid {args.unit} of the last hidden layer, percentiles of "
            "each mini-batch averaged over the steps since the previous evaluation. Training "
            f"time: {seconds:.0f} s ({args.steps / seconds:.0f} steps/s, both networks).",
            "",
            "| | without BN | with BN |",
            "|---|---|---|",
            *(f"| {name} | {without[name]} | {with_bn[name]} |" for name in without),
            "",
        ]
    )


def plot(rows: list[dict], path: Path) -> bool:
    """Panels (a), (b), (c) as a PNG; False (and nothing written) without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        return False
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    for key, style in zip(NETS, ("--", "-")):
        ax_a.plot(steps, [r[f"test_accuracy_{key}"] for r in rows], style, label=LABELS[key])
    ax_a.set(title="(a) test accuracy", xlabel="training step", ylabel="accuracy")
    ax_a.legend()
    for ax, panel, key in ((ax_b, "b", "without_bn"), (ax_c, "c", "with_bn")):
        for q in PERCENTILES:
            ax.plot(steps, [r[f"{key}_p{q}"] for r in rows], label=f"{q}th percentile")
        ax.set(title=f"({panel}) sigmoid input, {LABELS[key]}")
        ax.set_xlabel("training step")
    # one legend for (b) and (c), under the panels, where it hides no curve
    fig.legend(*ax_b.get_legend_handles_labels(), loc="outside lower right", ncols=3)
    low = min(ax_b.get_ylim()[0], ax_c.get_ylim()[0])
    high = max(ax_b.get_ylim()[1], ax_c.get_ylim()[1])
    for ax in (ax_b, ax_c):
        ax.set_ylim(low, high)  # one scale, so that the two distributions compare at a glance
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> dict[str, float]:
    train_data, test_data, data = load_data(args, min_train=args.batch_size, flatten=True)
    print(f"{settings(args)}; with and without BN")
    rows, seconds = train(args, train_data, test_data)
    markdown = summary_markdown(args, rows, data, seconds)
    write_outputs(Path(args.out), "bn_figure1", rows, markdown, lambda path: plot(rows, path))
    return {key: rows[-1][f"test_accuracy_{key}"] for key in NETS}


def summary_line(args: argparse.Namespace, final: dict[str, float]) -> str:
    """The last line printed: both networks' final test accuracies."""
    return (
        f"final test accuracy: without BN {final['without_bn']:.4f}, with BN {final['with_bn']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
