"""Every normalization variant side by side (seed 004, SPEC §6.4): accuracy, speed of
convergence and cost per step, over seeds.

    python -m tinynorm.examples.norm_variants [--quick] [--norms bn,wn,bin,sn,bln] [--seeds 0 1 2]

The claims, from seed 004's survey and seed 003 (arXiv 2209.08898):
- weight normalization with mean-only batch norm (`wn`) does better than batch norm;
- batch-instance norm (`bin`, a learned per-channel mix of BN and IN) does better than the
  better of its two components, and switchable norm (`sn`, learned mixes of BN, IN and LN
  statistics) better than the best of its three;
- batch-layer norm (`bln`) converges faster than BN and LN.

Every norm of `examples/designs.py`'s design (`--design`, default `small-maps`, the CNN whose
last norms see 7 × 7 and 3 × 3 maps; `--norms`, default all 13 of the main job's) is trained as
in `small_batch` (its `train_one`): the same number of steps (`--steps`, default 500) at each
batch size (`--batch-sizes`, default 16), from the seed's weights and example order, by SGD with
momentum 0.9 at lr `--lr` × batch / 64 after a 5% warm-up, tested in eval mode after a quarter
of the steps and at the end. "Converges faster" is judged by the test accuracy after a quarter
of the steps; "does better" by the final test accuracy; each claim by `examples/verdicts.py`'s
rule with an effect of one point (5 seeds where a difference is within 2 std). A mixture's
"better component" is the component with the higher mean final accuracy in the same run.

Outputs, in `--out` (written atomically): `norm_variants.csv` (one row per seed, norm and batch
size, `small_batch`'s columns), `norm_variants_curves.csv` (each run's training loss averaged
over 50 windows of its steps), `norm_variants.md` (the settings; per batch size, each norm's
accuracy after a quarter and at the end, final training loss and ms per step, mean ± std; the
verdicts) and `norm_variants.png` (training loss against steps, mean ± std bands, and the
accuracies with error bars, one style per norm; if matplotlib is installed). The last line
printed is the verdicts in one line.

Cost, on 2 CPU cores (2026-11-28): about 2 minutes a seed (13 norms × 500 steps at batch 16,
width 8, 10-20 ms a step, two evaluations of 10,000 images each), so about 6-7 minutes for 3
seeds and 11 with 5. `--quick` takes seconds and tests no claim.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinynorm.files import atomic_write

from .common import (
    experiment_parser,
    line_style,
    load_data,
    markdown_table,
    parse_experiment,
    plot_band,
    run_verdicts,
    write_csv,
    write_outputs,
)
from .designs import FC_NORMS
from .mnist import NORMS
from .small_batch import REFERENCE_BATCH, add_run_options, finish_args, train_one, warm_up
from .verdicts import (
    Comparison,
    mean_std,
    per_seed,
    run_seeds,
    sample_std,
    verdict_table,
)

EFFECT = 0.01  # one point of test accuracy
WINDOWS = 50  # points of each run's training-loss curve
DEFAULTS = {
    "small-maps": dict(norms=list(NORMS), steps=500, batch_sizes=[16], lr=0.4, width=8),
    "fc": dict(norms=list(FC_NORMS), steps=1500, batch_sizes=[16], lr=0.1, width=100),
}
QUICK = dict(steps=20, train_limit=512, test_limit=500)
FULL = dict(test_limit=None)
MIXTURES = {"bin": ("bn", "in"), "sn": ("bn", "in", "ln")}  # each mixture's components


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "norm_variants",
        "Every normalization layer on the same network, batches and steps: final accuracy, "
        "accuracy after a quarter of the steps, training loss and time per step, over seeds.",
        "a smoke run: 20 steps, 512 training and 500 test images",
    )
    add_run_options(p, DEFAULTS)
    return finish_args(p, parse_experiment(p, argv, QUICK, FULL), DEFAULTS)


def comparisons(args: argparse.Namespace, rows: list[dict]) -> list[Comparison]:
    """The claims this run can judge (those whose norms it ran), at each batch size."""
    found: list[Comparison] = []
    ran = set(args.norms)

    def compare(claim: str, key: str, better: str, worse: str, b: int) -> Comparison:
        return Comparison(
            f"{claim} (batch {b})",
            per_seed(rows, key, norm=better, batch_size=b),
            per_seed(rows, key, norm=worse, batch_size=b),
            EFFECT,
            (better.upper(), worse.upper()),
        )

    for b in args.batch_sizes:
        if {"wn", "bn"} <= ran:
            found.append(compare("WN + mean-only BN beats BN", "test_accuracy", "wn", "bn", b))
        for mixture, parts in MIXTURES.items():
            if {mixture, *parts} <= ran:
                best = max(parts, key=lambda n: np.mean(per_seed(rows, "test_accuracy", norm=n)))
                claim = f"{mixture.upper()} beats its best component, {best.upper()}"
                found.append(compare(claim, "test_accuracy", mixture, best, b))
        for other in ("bn", "ln"):
            if {"bln", other} <= ran:
                claim = f"BLN converges faster than {other.upper()}: accuracy at 1/4 of the steps"
                found.append(compare(claim, "test_accuracy_quarter", "bln", other, b))
    return found


def curve(losses: list[float]) -> list[float]:
    """The training losses averaged over `WINDOWS` equal windows of the steps (fewer if the
    run was shorter)."""
    return [float(np.mean(w)) for w in np.array_split(np.array(losses), min(WINDOWS, len(losses)))]


def diverged(rows: list[dict], norm: str, b: int) -> str:
    """' (k of n diverged)' where k of the norm's n runs at batch b ended on a non-finite
    loss, else ''."""
    flags = per_seed(rows, "diverged", norm=norm, batch_size=b)
    return f" ({int(sum(flags))} of {len(flags)} diverged)" if any(flags) else ""


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings; per batch size a table of each norm's numbers (mean ± std over the
    seeds); the verdicts."""
    seeds = sorted({r["seed"] for r in rows})
    parts = [
        "# Normalization variants side by side",
        "",
        f"Design {args.design} (width {args.width}); {args.steps} steps per run; SGD momentum "
        f"0.9, lr {args.lr:g} × batch / {REFERENCE_BATCH} after a 5% warm-up; seeds "
        f"{', '.join(map(str, seeds))}. Data: {data}. Tested in eval mode.",
    ]
    for b in args.batch_sizes:

        def cell(norm: str, key: str, digits: int = 4, b: int = b) -> str:
            return mean_std(per_seed(rows, key, norm=norm, batch_size=b), digits)

        table = markdown_table(
            ["norm", "accuracy at 1/4", "final accuracy", "final train loss", "ms per step"],
            [
                [
                    norm,
                    cell(norm, "test_accuracy_quarter"),
                    cell(norm, "test_accuracy") + diverged(rows, norm, b),
                    cell(norm, "final_train_loss"),
                    cell(norm, "ms_per_step", 2),
                ]
                for norm in args.norms
            ],
        )
        parts += ["", f"Batch {b}, mean ± std over the seeds:", "", table]
    return "\n".join([*parts, "", verdict_table(comparisons(args, rows)), ""])


def plot(args: argparse.Namespace, rows: list[dict], curves: list[dict], path: Path) -> bool:
    """Training loss against steps (mean ± std band over the seeds) and the accuracies (after
    a quarter of the steps: open marker; final: filled) with error bars, at the first batch
    size, one style per norm; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    b = args.batch_sizes[0]
    fig = Figure(figsize=(13, 5), layout="constrained")
    loss_ax, accuracy_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for i, norm in enumerate(args.norms):
        runs = [c for c in curves if c["norm"] == norm and c["batch_size"] == b]
        seeds = sorted({c["seed"] for c in runs})
        losses = np.array([[c["loss"] for c in runs if c["seed"] == s] for s in seeds])
        steps = [c["step"] for c in runs if c["seed"] == seeds[0]]
        plot_band(loss_ax, steps, losses, i, norm)
        style = line_style(i)
        for key, x, fill in (
            ("test_accuracy_quarter", i - 0.15, "none"),
            ("test_accuracy", i + 0.15, style["color"]),
        ):
            values = per_seed(rows, key, norm=norm, batch_size=b)
            accuracy_ax.errorbar(
                x,
                np.mean(values),
                yerr=sample_std(values),
                marker=style["marker"],
                color=style["color"],
                markerfacecolor=fill,
                capsize=3,
            )
    loss_ax.set(xlabel="step", ylabel="training loss (window mean)", yscale="log")
    loss_ax.grid(alpha=0.3)
    accuracy_ax.set_xticks(range(len(args.norms)), args.norms, rotation=45)
    accuracy_ax.set(ylabel="test accuracy: after 1/4 of the steps (open), final (filled)")
    accuracy_ax.grid(alpha=0.3)
    fig.legend(*loss_ax.get_legend_handles_labels(), loc="outside right upper")
    fig.suptitle(f"Normalization variants, design {args.design}, batch {b}, {args.steps} steps")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=max(args.batch_sizes))
    print(f"design {args.design}; norms {', '.join(args.norms)}; data: {data}")
    warm_up(args, train)
    curves: list[dict] = []
    per_seed_steps = len(args.norms) * len(args.batch_sizes) * args.steps
    with tqdm(total=per_seed_steps * len(args.seeds), desc="steps", dynamic_ncols=True) as bar:

        def run_seed(seed: int) -> list[dict]:
            if bar.n >= bar.total:
                bar.total += per_seed_steps
            rows = []
            for b in args.batch_sizes:
                for norm in args.norms:
                    row, losses = train_one(args, norm, b, seed, train, test, bar)
                    rows.append(row)
                    window = max(1, len(losses) // WINDOWS)
                    curves.extend(
                        {
                            "seed": seed,
                            "norm": norm,
                            "batch_size": b,
                            "step": (k + 1) * window,
                            "loss": round(loss, 6),
                        }
                        for k, loss in enumerate(curve(losses))
                    )
            return rows

        rows = run_seeds(args.seeds, run_seed, lambda r: comparisons(args, r), args.more_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "norm_variants_curves.csv", curves)
    markdown = summary_markdown(args, rows, data)
    write_outputs(out, "norm_variants", rows, markdown, lambda p: plot(args, rows, curves, p))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_verdicts(argv, parse_args, run, comparisons)


if __name__ == "__main__":
    sys.exit(main())
