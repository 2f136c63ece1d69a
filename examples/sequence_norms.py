"""Normalization in recurrent nets (issue 16; seeds 003 and 004): an LSTM, a layer-normalized
LSTM, a batch-normalized LSTM with statistics per time step and a batch-layer-normalized LSTM on
sequential MNIST, over seeds.

    python -m tinynorm.examples.sequence_norms [--quick] [--models lstm,ln,bn,bln] [--order rows]

Each image is read as a sequence of 28 steps of 28 pixels (`--order rows`, top to bottom, or
`columns`, left to right), and the last step's hidden state (H = `--hidden`, default 64) feeds a
linear classifier. The models: `lstm` (`nn.LSTM`), `ln` (`nn.LayerNormLSTM`, Ba, Kiros & Hinton
2016, §3.1), `bn` (`nn.BatchNormLSTM`, Cooijmans et al. 2016: batch norm with separate
statistics at each of the 28 steps, γ = 0.1) and `bln` (`nn.BatchLayerNormLSTM`, the same cell
with batch-layer norm, arXiv 2209.08898). Every model takes the same `--steps` updates (default
400) on the same batches of 64 from each seed, by Adam at lr `--lr` (default 0.002); test
accuracy is measured in eval mode every eighth of the steps on the first 2,000 test images (the
curve) and at the end on all of them.

The claims, each judged by `examples/verdicts.py`'s rule on the accuracy after a quarter of the
steps (one point of accuracy the smallest difference meant; 5 seeds where a difference is within
2 std):
- layer norm helps recurrent nets train faster: LN-LSTM beats the LSTM (seed 004);
- batch norm with per-step statistics does too: BN-LSTM beats the LSTM (Cooijmans et al.);
- batch-layer norm converges faster than batch norm and layer norm: BLN-LSTM beats BN-LSTM and
  LN-LSTM (seed 003).
Batch norm is awkward for sequences (seed 003) in a way the accuracy does not show: it needs a
set of running statistics per time step (3 × 28 here), and none for a step it never trained on.

Outputs, in `--out` (written atomically): `sequence_norms.csv` (one row per seed and model),
`sequence_norms_curves.csv` (test accuracy against steps), `sequence_norms.md` (the settings,
the numbers as mean ± std, the verdicts) and `sequence_norms.png` (test accuracy against steps
with mean ± std bands, one style per model; if matplotlib is installed). The last line printed
is the verdicts in one line.

Cost, on 2 CPU cores (2026-11-28): see examples/RESULTS.md; `--quick` takes seconds and tests no
claim.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
from tinynorm import nn, ops
from tinynorm.data import DataLoader
from tinynorm.files import atomic_write

from .common import (
    Data,
    dataset_kind,
    endless,
    evaluate,
    experiment_parser,
    final_loss,
    load_data,
    markdown_table,
    parse_experiment,
    plot_band,
    positive_int,
    run_verdicts,
    train_step,
    write_csv,
    write_outputs,
)
from .small_batch import name_list
from .verdicts import Comparison, mean_std, per_seed, run_seeds, verdict_table

SIDE = 28  # steps per sequence and pixels per step
MODELS = {
    "lstm": nn.LSTM,
    "ln": nn.LayerNormLSTM,
    "bn": nn.BatchNormLSTM,
    "bln": nn.BatchLayerNormLSTM,
}
LABELS = {"lstm": "LSTM", "ln": "LN-LSTM", "bn": "BN-LSTM", "bln": "BLN-LSTM"}
CLAIMS = [  # (better, worse, where from)
    ("ln", "lstm", "seed 004"),
    ("bn", "lstm", "Cooijmans et al."),
    ("bln", "bn", "seed 003"),
    ("bln", "ln", "seed 003"),
]
EFFECT = 0.01  # one point of test accuracy
BATCH = 64
EVALS = 8  # points of each run's test-accuracy curve
CURVE_IMAGES = 2_000  # test images behind each point of the curve
QUICK = dict(steps=16, hidden=16, train_limit=512, test_limit=200)
FULL = dict(steps=400, hidden=64, test_limit=None)


class SequenceClassifier(nn.Module):
    """Images (N, 1, 28, 28) read as 28 steps of 28 pixels (rows, or columns) by a recurrent
    `model` of `hidden` units; logits = Linear(h at the last step)."""

    def __init__(self, model: str, hidden: int, order: str = "rows"):
        super().__init__()
        per_step = {} if model in ("lstm", "ln") else {"max_steps": SIDE}
        self.rnn = MODELS[model](SIDE, hidden, batch_first=True, **per_step)
        self.head = nn.Linear(hidden, 10)
        self.order = order

    def forward(self, x: tn.Tensor) -> tn.Tensor:
        sequence = ops.reshape(x, (x.shape[0], SIDE, SIDE))
        if self.order == "columns":
            sequence = ops.permute(sequence, (0, 2, 1))
        _, (h_n, _) = self.rnn(sequence)
        return self.head(ops.getitem(h_n, -1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "sequence_norms",
        "LSTM, layer-norm LSTM, per-step batch-norm LSTM and batch-layer-norm LSTM on "
        "sequential MNIST, over seeds: test accuracy against steps and the verdicts.",
        "a smoke run: 16 steps, 16 hidden units, 512 training and 200 test images",
    )
    p.add_argument(
        "--models",
        type=name_list,
        default=list(MODELS),
        help=f"comma-separated, from {', '.join(MODELS)} (default: all)",
    )
    p.add_argument(
        "--order",
        choices=("rows", "columns"),
        default="rows",
        help="one step per image row (default) or column",
    )
    p.add_argument("--steps", type=positive_int, help="updates per run (default: 400)")
    p.add_argument("--hidden", type=positive_int, help="hidden units (default: 64)")
    p.add_argument("--lr", type=float, default=0.002, help="Adam's lr (default: 0.002)")
    args = parse_experiment(p, argv, QUICK, FULL)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(MODELS)})")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    return args


def train_one(args, model_name: str, seed: int, train: Data, test: Data, bar) -> tuple[dict, list]:
    """One run of `model_name` from the weights and batches of `seed`: its CSV row and its
    test-accuracy curve (dicts of step and accuracy)."""
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, drop_last=True, seed=seed)
    tn.manual_seed(seed)
    model = SequenceClassifier(model_name, args.hidden, args.order)
    optimizer = tn.optim.Adam(list(model.parameters()), lr=args.lr)
    every = max(1, args.steps // EVALS)
    batches, losses, seconds, curve = endless(loader), [], 0.0, []
    subset = (test[0][:CURVE_IMAGES], test[1][:CURVE_IMAGES])
    quarter = math.nan
    while len(losses) < args.steps and (not losses or math.isfinite(losses[-1])):
        began = time.perf_counter()
        losses.append(train_step(model, optimizer, *next(batches)))
        seconds += time.perf_counter() - began
        bar.update(1)
        if len(losses) % every == 0:
            curve.append({"step": len(losses), "test_accuracy": evaluate(model, subset)})
        if len(losses) == max(1, args.steps // 4):
            quarter = evaluate(model, test)
    bar.update(args.steps - len(losses))
    accuracy = evaluate(model, test)
    bar.set_postfix_str(f"seed {seed} {model_name}: {accuracy:.4f}")
    row = {
        "seed": seed,
        "model": model_name,
        "order": args.order,
        "hidden": args.hidden,
        "steps": len(losses),
        "lr": args.lr,
        "test_accuracy_quarter": round(quarter, 6),
        "test_accuracy": round(accuracy, 6),
        "final_train_loss": round(final_loss(losses), 6),
        "ms_per_step": round(1e3 * seconds / len(losses), 3),
        "diverged": int(not math.isfinite(losses[-1])),
    }
    return row, [{"seed": seed, "model": model_name, **point} for point in curve]


def comparisons(args: argparse.Namespace, rows: list[dict]) -> list[Comparison]:
    """The claims this run can judge (those whose models it ran)."""
    return [
        Comparison(
            f"{LABELS[better]} trains faster than {LABELS[worse]} ({source}): test accuracy "
            "at 1/4 of the steps",
            per_seed(rows, "test_accuracy_quarter", model=better),
            per_seed(rows, "test_accuracy_quarter", model=worse),
            EFFECT,
            (LABELS[better], LABELS[worse]),
        )
        for better, worse, source in CLAIMS
        if {better, worse} <= set(args.models)
    ]


def settings(args: argparse.Namespace, seeds: list[int]) -> str:
    return (
        f"sequential {dataset_kind(args).name} by {args.order} ({SIDE} steps of {SIDE} "
        f"pixels); models {', '.join(args.models)}; {args.hidden} hidden units; {args.steps} "
        f"steps at batch {BATCH}; Adam lr {args.lr:g}; seeds {', '.join(map(str, seeds))}"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings, each model's numbers (mean ± std over the seeds), the verdicts."""
    seeds = sorted({r["seed"] for r in rows})

    def cell(model: str, key: str, digits: int = 4) -> str:
        return mean_std(per_seed(rows, key, model=model), digits)

    table = markdown_table(
        ["model", "accuracy at 1/4", "final accuracy", "final train loss", "ms per step"],
        [
            [
                LABELS[m],
                cell(m, "test_accuracy_quarter"),
                cell(m, "test_accuracy"),
                cell(m, "final_train_loss"),
                cell(m, "ms_per_step", 1),
            ]
            for m in args.models
        ],
    )
    total = sum(r["ms_per_step"] * r["steps"] for r in rows) / 1e3
    return "\n".join(
        [
            "# Normalization in recurrent nets",
            "",
            f"{settings(args, seeds)}. Data: {data}. Tested in eval mode. Training time "
            f"{total:.0f} s in all.",
            "",
            "Mean ± std over the seeds:",
            "",
            table,
            "",
            verdict_table(comparisons(args, rows)),
            "",
        ]
    )


def plot(args: argparse.Namespace, curves: list[dict], path: Path) -> bool:
    """Test accuracy against steps, mean ± std band over the seeds, one style per model;
    False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, model in enumerate(args.models):
        runs = [c for c in curves if c["model"] == model]
        seeds = sorted({c["seed"] for c in runs})
        accuracy = np.array([[c["test_accuracy"] for c in runs if c["seed"] == s] for s in seeds])
        steps = [c["step"] for c in runs if c["seed"] == seeds[0]]
        plot_band(ax, steps, accuracy, i, LABELS[model])
    ax.set(xlabel="step", ylabel=f"test accuracy (first {CURVE_IMAGES:,} test images)")
    ax.grid(alpha=0.3)
    ax.legend()
    title = f"Sequential {dataset_kind(args).name} by {args.order}, {args.hidden} hidden units"
    fig.suptitle(title)
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=BATCH)
    print(settings(args, args.seeds))
    for name in args.models:  # Numba's compilation (or cache load) outside the timed steps
        model = SequenceClassifier(name, args.hidden, args.order)
        train_step(
            model,
            tn.optim.SGD(list(model.parameters()), lr=0.0),
            tn.tensor(train[0][:2]),
            tn.tensor(train[1][:2]),
        )
    curves: list[dict] = []
    per_seed_steps = len(args.models) * args.steps
    with tqdm(total=per_seed_steps * len(args.seeds), desc="steps", dynamic_ncols=True) as bar:

        def run_seed(seed: int) -> list[dict]:
            if bar.n >= bar.total:
                bar.total += per_seed_steps
            rows = []
            for name in args.models:
                row, curve = train_one(args, name, seed, train, test, bar)
                rows.append(row)
                curves.extend(curve)
            return rows

        rows = run_seeds(args.seeds, run_seed, lambda r: comparisons(args, r), args.more_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sequence_norms_curves.csv", curves)
    markdown = summary_markdown(args, rows, data)
    write_outputs(out, "sequence_norms", rows, markdown, lambda p: plot(args, curves, p))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_verdicts(argv, parse_args, run, comparisons)


if __name__ == "__main__":
    sys.exit(main())
