"""Ioffe & Szegedy (2015), Figure 1: a sigmoid network with and without batch norm, over seeds.

    python -m tinynorm.examples.bn_figure1 [--quick] [--steps 25000] [--seeds 0 1 2]
        [--dataset mnist|fashion-mnist] [--out results/bn_figure1/<dataset>]

The network of the paper's section 4.1: 784 inputs, three fully connected hidden layers of 100
sigmoid units and a 10-way softmax, trained by plain SGD on mini-batches of 60 examples:

    without BN:  h_l = σ(W_l h_{l-1} + b_l)            σ(z) = 1 / (1 + e^(-z)), l = 1, 2, 3
    with BN:     h_l = σ(BN(W_l h_{l-1} + b_l))        BN(z) = γ·(z - μ_B)/sqrt(σ²_B + ε) + β
    output:      p = softmax(W_4 h_3 + b_4), loss = -log p_label (mean over the batch)
    update:      θ ← θ - η·∂loss/∂θ                     (no momentum, no weight decay)

μ_B and σ²_B are each unit's mean and variance over the mini-batch (the running estimates are
used for the test accuracy, in eval mode). For each seed (`--seeds`, default 0 1 2), both
networks start from that seed's weights and see that seed's batches in the same order, trained
in lockstep: batch norm is the only difference.

Initialization. The paper says only that W is "initialized to small random Gaussian values". We
use W ~ N(0, 0.01²) and b = 0 (`--init-std 0.01`): the classic "small" Gaussian (AlexNet's and
many tutorials' 0.01·randn), a standard normal scaled by 0.01. This is the regime the paper's
argument is about: the sigmoid inputs of the deeper layers start near zero with a tiny spread,
the gradient reaching the lower layers is tiny (each layer multiplies it by σ' ≤ 1/4 and by
weights of 0.01), and every update moves the inputs of the layers above. An initialization
scaled to the layer's width narrows the gap. Measured on mnist-lite, seed 0, 5,000 steps at lr
0.5, full test set (test accuracy without / with BN; steps to reach 90%, without / with BN):

    --init-std 0.01   0.8730 / 0.9436   never / 1,500
    --init-std 0.05   0.9404 / 0.9449   1,000 / 500
    --init-std 0.1    0.9487 / 0.9465   1,000 / 500     (0.1 = 1/sqrt(fan_in) for 100 inputs)

Nor does the paper give the learning rate; we use 0.5 (`--lr`), a usual rate for plain SGD on a
sigmoid MLP, the same for both networks. At lr 1 (std 0.01, 5,000 steps, 2,000 test images) the
plain network did better (0.8955) and the BN one the same (0.9345).

Steps. The paper trains 50,000 steps; we train 25,000 (`--steps`), so that three seeds fit in
a few minutes: in a 50,000-step run (MNIST, seed 0) both curves were flat after 15,000 steps
(without BN 0.9103 at 15,000 and at 50,000; with BN 0.9533 and 0.9557).

What is recorded. Every `--eval-every` steps, the test accuracy of both networks; at every step,
through a `tinynorm.diagnostics.PercentileTracer` on the last hidden sigmoid, the 15th, 50th and
85th percentiles over the mini-batch of one unit's sigmoid input (`--unit`): W_3 h_2 + b_3
without BN, the BN output with it, as in the paper's panels (b) and (c). A percentile of 60
values is noisy, so each point of a curve is the mean of the per-batch percentiles over the
batches trained on since the previous evaluation (step 0: the first batch, before any update).

The claims, each a `verdicts.Comparison` over the seeds (gain = difference of the means, noise
= the sum of the two standard deviations; reproduced where gain > noise, not reproduced where
gain + noise < the effect, else inconclusive; 5 seeds where the gain is within 2 std):
- BN trains faster: the test accuracy at the first evaluation at or after a tenth of the steps
  (step 2,500 by default), with BN minus without; effect 0.01 (one point). A tenth of the steps
  rather than the steps to a target accuracy, which would need a target per dataset;
- BN reaches a higher final accuracy: the test accuracy after the last step; effect 0.01;
- BN keeps the input distribution stable: the range (max − min) over training of the traced
  input's median, and of its 15th percentile, without BN minus with BN (so that the larger drift
  is the "better" value of the rule); effect 0.5, a quarter of the sigmoid's near-linear range
  ±2.

Outputs, in `--out` (each written atomically, by `tinynorm.files.atomic_write`):
- `bn_figure1.csv`: one row per seed and network: the accuracy at the early step, final and
  best, and the median's and 15th percentile's ranges;
- `bn_figure1_curves.csv`: the curves, one row per seed and evaluation: step, the two test
  accuracies and the six percentiles;
- `bn_figure1.md`: the settings, mean ± std over the seeds of each measure, the percentiles at
  the first and last evaluation (means), and the verdicts;
- `bn_figure1.png`: panels (a), (b), (c), each curve the mean over the seeds with a ± std band,
  if matplotlib is installed (`pip install 'tinynorm[plot]'`); without it the program says so
  and writes the rest.
The last line printed is `final test accuracy (mean ± std over N seeds): without BN ..., with
BN ...; faster: <verdict>, higher final accuracy: <verdict>, stable median: <verdict>, stable
15th percentile: <verdict>`.

Data. `--dataset mnist` (offline: the bundled mnist-lite) or `fashion-mnist`, the first 10,000
training images of either (where the paper had MNIST's 60,000: 25,000 steps of 60 are 150
passes over them) and the full test set (10,000 images) unless `--test-limit`.

Cost, measured on 2 CPU cores (AMD EPYC, 2026-11-23): a training step takes 0.9 ms without BN
and 1.8 ms with it (tracer included); with the evaluations, about 375 steps per second for the
two networks together. So a seed of 25,000 steps takes about 70 seconds, the default three
seeds about 3.5 minutes (6 where a verdict needs seeds 3 and 4 too), the same on Fashion-MNIST;
`--quick` (two seeds of 1,000 steps, 2,000 test images) about 10 seconds with start-up
(16 s with other jobs on the cores).
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
    plot_band,
    run_experiment,
    write_csv,
    write_outputs,
)
from .verdicts import Comparison, mean_std, per_seed, run_seeds, verdict_table

SIZES = (784, 100, 100, 100, 10)  # input, three hidden layers, classes
PERCENTILES = (15, 50, 85)
NETS = ("without_bn", "with_bn")
LABELS = {"without_bn": "without BN", "with_bn": "with BN"}
EARLY = 0.1  # "trains faster": the accuracy at the first evaluation after this share of steps
ACCURACY_EFFECT = 0.01  # one point of test accuracy
DRIFT_EFFECT = 0.5  # in units of the sigmoid's input: a quarter of its near-linear range ±2
QUICK = dict(steps=1000, eval_every=100, seeds=[0, 1], train_limit=10_000, test_limit=2000)
FULL = dict(steps=25_000, eval_every=500, train_limit=None, test_limit=None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "bn_figure1",
        "Ioffe & Szegedy's Figure 1: test accuracy and the 15/50/85th percentiles "
        "of a sigmoid input over training, in a 3×100 sigmoid MLP with and without batch norm.",
        "a short run: seeds 0 and 1, 1,000 steps, evaluation every 100, the first 10,000 "
        "training and 2,000 test images",
    )
    p.add_argument("--steps", type=int, help="training steps (default: 25,000)")
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
def train(args: argparse.Namespace, seed: int, train_data, test_data) -> tuple[list[dict], float]:
    """Train both networks in lockstep from `seed`'s weights and batches; returns the curves
    (one row per evaluation) and the training time in seconds."""
    weights = gaussian_weights(args.init_std, seed)
    models = {"without_bn": build_mlp(weights, False), "with_bn": build_mlp(weights, True)}
    optimizers = {k: tn.optim.SGD(list(m.parameters()), lr=args.lr) for k, m in models.items()}
    tracers = {
        k: PercentileTracer(last_sigmoid(m), PERCENTILES, which="input", index=args.unit)
        for k, m in models.items()
    }
    accuracy = {0: {k: evaluate(m, test_data, "cpu") for k, m in models.items()}}
    loader = DataLoader(
        train_data, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=seed
    )
    batches = endless(loader)
    began = time.perf_counter()
    bar = tqdm(range(1, args.steps + 1), desc=f"seed {seed}", unit="step", dynamic_ncols=True)
    for step in bar:
        x, y = next(batches)
        check_interrupt()
        for key, model in models.items():
            loss = F.cross_entropy(model(x), y)
            check_finite_loss(loss.item(), f"step {step} ({LABELS[key]}, seed {seed})", args.lr)
            optimizers[key].zero_grad()
            loss.backward()
            optimizers[key].step()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy[step] = {k: evaluate(m, test_data, "cpu") for k, m in models.items()}
            bar.set_postfix({LABELS[k]: f"{a:.4f}" for k, a in accuracy[step].items()})
    seconds = time.perf_counter() - began
    for tracer in tracers.values():
        tracer.remove()
    return make_curves(seed, accuracy, tracers), seconds


def make_curves(
    seed: int, accuracy: dict[int, dict], tracers: dict[str, PercentileTracer]
) -> list[dict]:
    """One row per evaluation. A tracer's step s is the forward pass after s updates; a row at
    step s > 0 averages the percentiles of steps [previous row's step, s), row 0 has step 0's."""
    rows, previous = [], 0
    for step, acc in accuracy.items():
        row = {"seed": seed, "step": step}
        row.update({f"test_accuracy_{k}": round(a, 6) for k, a in acc.items()})
        for key, tracer in tracers.items():
            window = (tracer.steps >= previous) & (tracer.steps < max(step, 1))
            means = tracer.values[window].mean(axis=0)
            row.update({f"{key}_p{q}": round(float(v), 6) for q, v in zip(PERCENTILES, means)})
        rows.append(row)
        previous = step
    return rows


def measures(curves: list[dict]) -> list[dict]:
    """One seed's row per network: what the verdicts compare. The early step is the first
    evaluation at or after EARLY of the steps; a range is max − min over the evaluations."""
    steps = [c["step"] for c in curves]
    early = next(i for i, s in enumerate(steps) if s >= EARLY * steps[-1])
    rows = []
    for key in NETS:
        accuracy = [c[f"test_accuracy_{key}"] for c in curves]
        rows.append(
            {
                "seed": curves[0]["seed"],
                "network": key,
                "early_step": steps[early],
                "test_accuracy_early": accuracy[early],
                "test_accuracy_final": accuracy[-1],
                "test_accuracy_best": max(accuracy),
                **{
                    f"p{q}_range": round(float(np.ptp([c[f"{key}_p{q}"] for c in curves])), 6)
                    for q in (50, 15)
                },
            }
        )
    return rows


def comparisons(rows: list[dict]) -> dict[str, Comparison]:
    """The claims, by a short name, each judged over the seeds of `rows`."""

    def values(key: str, net: str) -> list[float]:
        return per_seed(rows, key, network=net)

    def accuracy(claim: str, key: str) -> Comparison:
        better, worse = values(key, "with_bn"), values(key, "without_bn")
        return Comparison(claim, better, worse, ACCURACY_EFFECT, ("with BN", "without BN"))

    def drift(claim: str, q: int) -> Comparison:
        larger, smaller = values(f"p{q}_range", "without_bn"), values(f"p{q}_range", "with_bn")
        names = ("without BN", "with BN")
        return Comparison(claim, larger, smaller, DRIFT_EFFECT, names, digits=2)

    early = rows[0]["early_step"]
    return {
        "faster": accuracy(
            f"BN trains faster: test accuracy at step {early:,}", "test_accuracy_early"
        ),
        "higher final accuracy": accuracy(
            "BN reaches a higher final accuracy: test accuracy at the last step",
            "test_accuracy_final",
        ),
        "stable median": drift(
            "BN keeps the input distribution stable: the median's range over training, larger "
            "without BN",
            50,
        ),
        "stable 15th percentile": drift(
            "BN keeps the input distribution stable: the 15th percentile's range over training, "
            "larger without BN",
            15,
        ),
    }


# ---- outputs ----------------------------------------------------------------------------------
def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"MLP {'-'.join(map(str, SIZES))} (sigmoid), W ~ N(0, {args.init_std:g}²), b = 0; "
        f"SGD lr {args.lr:g}, batch {args.batch_size}, {args.steps:,} steps"
    )


def curve_array(curves: list[dict], column: str) -> np.ndarray:
    """`column` of the curves as an array: one row per seed, one column per evaluation."""
    seeds = sorted({c["seed"] for c in curves})
    return np.array([[c[column] for c in curves if c["seed"] == s] for s in seeds])


def summary_markdown(
    args: argparse.Namespace, rows: list[dict], curves: list[dict], data: str, seconds: float
) -> str:
    """The settings, a table of the measures (mean ± std over the seeds) and the percentiles
    (means) of both networks, and the verdicts."""
    seeds = sorted({r["seed"] for r in rows})
    steps = [c["step"] for c in curves if c["seed"] == seeds[0]]
    table = {
        f"test accuracy at step {rows[0]['early_step']:,}": ("test_accuracy_early", 4),
        "final test accuracy": ("test_accuracy_final", 4),
        "best test accuracy": ("test_accuracy_best", 4),
        "median's range over training (max − min of p50)": ("p50_range", 2),
        "15th percentile's range over training": ("p15_range", 2),
    }
    lines = [
        f"| {name} | "
        + " | ".join(mean_std(per_seed(rows, key, network=net), digits) for net in NETS)
        + " |"
        for name, (key, digits) in table.items()
    ]
    for i in (0, -1):
        means = {
            net: " / ".join(
                f"{curve_array(curves, f'{net}_p{q}')[:, i].mean():+.2f}" for q in PERCENTILES
            )
            for net in NETS
        }
        lines.append(
            f"| sigmoid input p15 / p50 / p85 at step {steps[i]:,} (mean) | "
            f"{means['without_bn']} | {means['with_bn']} |"
        )
    return "\n".join(
        [
            "# Ioffe & Szegedy, Figure 1, with tinynorm",
            "",
            f"{settings(args)}. Data: {data}; evaluated every {args.eval_every:,} steps. Seeds "
            f"{', '.join(map(str, seeds))}: mean ± std over the seeds. Traced: the input of "
            f"sigmoid {args.unit} of the last hidden layer, percentiles of each mini-batch "
            "averaged over the steps since the previous evaluation. Training time: "
            f"{seconds:.0f} s ({len(seeds) * args.steps / seconds:.0f} steps/s, both networks).",
            "",
            "| | without BN | with BN |",
            "|---|---|---|",
            *lines,
            "",
            "Verdicts (reproduced: gain > noise, the sum of the two standard deviations; not "
            "reproduced: gain + noise < the effect; else inconclusive):",
            "",
            verdict_table(list(comparisons(rows).values())),
            "",
        ]
    )


def plot(curves: list[dict], path: Path) -> bool:
    """Panels (a), (b), (c) as a PNG, each curve the mean over the seeds with a ± std band;
    False (and nothing written) without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    except ImportError:
        return False
    steps = [c["step"] for c in curves if c["seed"] == curves[0]["seed"]]
    seeds = len({c["seed"] for c in curves})
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    for i, key in enumerate(NETS):
        plot_band(ax_a, steps, curve_array(curves, f"test_accuracy_{key}"), i, LABELS[key])
    ax_a.set(title="(a) test accuracy", xlabel="training step", ylabel="accuracy")
    ax_a.legend()
    for ax, panel, key in ((ax_b, "b", "without_bn"), (ax_c, "c", "with_bn")):
        for i, q in enumerate(PERCENTILES, start=len(NETS)):
            plot_band(ax, steps, curve_array(curves, f"{key}_p{q}"), i, f"{q}th percentile")
        ax.set(title=f"({panel}) sigmoid input, {LABELS[key]}")
        ax.set_xlabel("training step")
    # one legend for (b) and (c), under the panels, where it hides no curve
    fig.legend(*ax_b.get_legend_handles_labels(), loc="outside lower right", ncols=3)
    fig.suptitle(f"mean ± std over {seeds} seed{'s' * (seeds > 1)}")
    low = min(ax_b.get_ylim()[0], ax_c.get_ylim()[0])
    high = max(ax_b.get_ylim()[1], ax_c.get_ylim()[1])
    for ax in (ax_b, ax_c):
        ax.set_ylim(low, high)  # one scale, so that the two distributions compare at a glance
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train_data, test_data, data = load_data(args, min_train=args.batch_size, flatten=True)
    print(f"{settings(args)}; with and without BN")
    curves: list[dict] = []
    seconds = 0.0

    def run_seed(seed: int) -> list[dict]:
        nonlocal seconds
        seed_curves, seed_seconds = train(args, seed, train_data, test_data)
        curves.extend(seed_curves)
        seconds += seed_seconds
        return measures(seed_curves)

    rows = run_seeds(args.seeds, run_seed, lambda r: list(comparisons(r).values()), args.more_seeds)
    out = Path(args.out)
    markdown = summary_markdown(args, rows, curves, data, seconds)
    write_outputs(out, "bn_figure1", rows, markdown, lambda path: plot(curves, path))
    write_csv(out / "bn_figure1_curves.csv", curves)
    print(f"wrote {out / 'bn_figure1_curves.csv'}")
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: both networks' final test accuracies and the verdicts."""
    final = {net: per_seed(rows, "test_accuracy_final", network=net) for net in NETS}
    verdicts = ", ".join(f"{name}: {c.verdict}" for name, c in comparisons(rows).items())
    return (
        f"final test accuracy (mean ± std over {len(final['with_bn'])} seeds): without BN "
        f"{mean_std(final['without_bn'])}, with BN {mean_std(final['with_bn'])}; {verdicts}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
