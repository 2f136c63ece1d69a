"""Small batches, statistics over few values (seeds 000 and 004): BN, BRN, GN and LN at batch
sizes 2 to 128, with equal numbers of updates.

    python -m tinynorm.examples.small_batch [--quick] [--design fc|small-maps] [--seeds 0 1 2]

The claims. Batch norm degrades at small batches: a model trained on the statistics of a few
examples is noisy in training and is tested with running averages that disagree with them.
Batch renormalization (seed 000) corrects the batch statistics towards the running averages
and holds up at batch 2 and 4; group norm and layer norm (seed 004, the GN paper's Figure 1)
use no batch statistics and are stable across batch sizes while BN degrades.

The effect needs statistics over few values, so the networks are `examples/designs.py`'s
(`--design`): `fc`, 784 → 100 → 100 → 10 with BatchNorm1d, whose statistics pool N values (2
at batch 2), and `small-maps`, a CNN whose last norms see 7 × 7 and 3 × 3 maps (N × 9 values
at the last). The main job's CNN pools N × 784 at its first norm, where batch 2 is plenty.

Every norm (`--norms`, default none, bn, brn, gn, ln) trains at every batch size for the same
number of steps (`--steps`), so that the batch size, not the number of updates, is what varies;
from the seed's initial weights (the same for every norm) and example order; by SGD with
momentum 0.9 at the linear scaling rule's lr = `--lr` × batch / 64, after a linear warm-up
from a tenth of it over the first 5% of the steps. Batch renorm's r, d limits follow the
paper's schedule scaled to the run (`BatchRenorm.scale_schedule`). Each model is tested in eval
mode, batch-statistic norms with their running estimates, as deployed.

The verdicts (`examples/verdicts.py`: mean ± std over the seeds; 5 seeds where a difference is
within 2 std): "BRN beats BN at batch b" for b = 2 and 4 (test accuracy, effect one point), and
"BN degrades more than GN (LN) from the largest batch to the smallest" (the drop in test
accuracy, per seed, effect one point).

Outputs, in `--out` (written atomically): `small_batch.csv` (one row per seed, norm and batch
size: steps, lr, values per statistic, test accuracy after a quarter of the steps and at the
end, mean training loss over the last tenth of the steps, ms per training step, diverged),
`small_batch.md` (the settings, accuracy mean ± std, the verdicts) and `small_batch.png`
(accuracy and training loss against batch size, mean ± std error bars, if matplotlib is
installed). The last line printed is the verdicts in one line.

Cost, on 2 CPU cores (2026-11-28): `fc` 1,500 steps at batch 2, 4, 8, 32 and 128, about 2 min
a seed; `small-maps` (width 8) 600 steps at batch 2, 4 and 16, about 2 min a seed; so 6-7
minutes for 3 seeds, 10-11 with 5. `--quick` takes seconds and tests no claim.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

import tinynorm as tn
from tinynorm.data import DataLoader
from tinynorm.files import atomic_write

from .common import (
    Data,
    endless,
    evaluate,
    experiment_parser,
    final_loss,
    load_data,
    markdown_table,
    parse_experiment,
    plot_mean_std,
    positive_int,
    run_verdicts,
    train_step,
    write_outputs,
)
from .designs import DESIGN_NORMS, DESIGNS
from .verdicts import Comparison, mean_std, per_seed, run_seeds, verdict_table

REFERENCE_BATCH = 64  # the batch size at which the learning rate is --lr
EFFECT = 0.01  # one point of test accuracy: the smallest difference the claims mean
NORMS = ["none", "bn", "brn", "gn", "ln"]
DEFAULTS = {  # per design: steps, batch sizes, lr at batch 64, width (chosen in a pilot run)
    "fc": dict(norms=NORMS, steps=1500, batch_sizes=[2, 4, 8, 32, 128], lr=0.1, width=100),
    "small-maps": dict(norms=NORMS, steps=600, batch_sizes=[2, 4, 16], lr=0.4, width=8),
}
QUICK = dict(steps=20, train_limit=512, test_limit=500)
FULL = dict(test_limit=None)


def values_per_statistic(design: str, batch_size: int) -> int:
    """The fewest values a batch statistic of the design pools: N (fc), N × 3 × 3 (small-maps)."""
    return batch_size * (1 if design == "fc" else 9)


def name_list(text: str) -> list[str]:
    """`--norms`: comma-separated names, in the order given, without repeats."""
    return list(dict.fromkeys(name.strip() for name in text.split(",")))


def batch_size_list(text: str) -> list[int]:
    """`--batch-sizes`: comma-separated positive integers, sorted, without repeats."""
    return sorted({positive_int(item) for item in text.split(",")})


def add_run_options(p: argparse.ArgumentParser, designs: dict[str, dict]) -> None:
    """--design (one of `designs`, the first the default), --norms, --batch-sizes, --steps,
    --lr and --width, each left None for `finish_args` to fill from the design's defaults."""
    p.add_argument(
        "--design",
        choices=designs,
        default=next(iter(designs)),
        help="network (default: %(default)s)",
    )
    p.add_argument("--norms", type=name_list, help="comma-separated norms (default: the design's)")
    p.add_argument("--batch-sizes", type=batch_size_list, help="default: the design's")
    p.add_argument("--steps", type=positive_int, help="updates per run (default: the design's)")
    p.add_argument(
        "--lr", type=float, help=f"lr at batch {REFERENCE_BATCH} (default: the design's)"
    )
    p.add_argument("--width", type=positive_int, help="hidden units or first channels")


def finish_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, designs: dict[str, dict]
) -> argparse.Namespace:
    """Fill every run option left None from `designs[args.design]`; check the norms and lr."""
    for key, value in designs[args.design].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [n for n in args.norms if n not in DESIGN_NORMS[args.design]]
    if unknown:
        p.error(
            f"--norms: {', '.join(unknown)} not available for --design {args.design} (choose "
            f"from {', '.join(DESIGN_NORMS[args.design])})"
        )
    if not args.lr > 0:
        p.error("--lr must be > 0")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "small_batch",
        "BN, batch renorm, GN and LN at batch sizes 2 to 128 with equal numbers of updates, on "
        "networks whose batch statistics pool few values.",
        "a smoke run: 20 steps, 512 training and 500 test images",
    )
    add_run_options(p, DEFAULTS)
    return finish_args(p, parse_experiment(p, argv, QUICK, FULL), DEFAULTS)


def warm_up(args: argparse.Namespace, train: Data) -> None:
    """One untimed training step of each norm's model on two examples, so that Numba's
    compilation (or its cache load) is not counted in the first run's time per step."""
    for norm in args.norms:
        model = DESIGNS[args.design](norm, args.steps, args.width)
        optimizer = tn.optim.SGD(list(model.parameters()), lr=0.0)
        train_step(model, optimizer, *next(iter(DataLoader(train, batch_size=2))))


def train_one(
    args, norm: str, batch_size: int, seed: int, train: Data, test: Data, bar
) -> tuple[dict, list[float]]:
    """One run: `norm` at `batch_size` for `args.steps` updates from the weights of `seed`,
    stopping at a non-finite loss, tested after a quarter of the steps and at the end; its CSV
    row and its training losses."""
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True, seed=seed)
    lr = args.lr * batch_size / REFERENCE_BATCH
    tn.manual_seed(seed)
    model = DESIGNS[args.design](norm, args.steps, args.width)
    optimizer = tn.optim.SGD(list(model.parameters()), lr=lr, momentum=0.9)
    warm_up = tn.optim.lr_scheduler.LinearLR(optimizer, 0.1, total_iters=max(1, args.steps // 20))
    batches, losses, seconds, quarter = endless(loader), [], 0.0, math.nan
    while len(losses) < args.steps and (not losses or math.isfinite(losses[-1])):
        began = time.perf_counter()
        losses.append(train_step(model, optimizer, *next(batches)))
        warm_up.step()
        seconds += time.perf_counter() - began
        bar.update(1)
        if len(losses) == max(1, args.steps // 4):
            quarter = evaluate(model, test)
    bar.update(args.steps - len(losses))
    accuracy = evaluate(model, test)
    bar.set_postfix_str(f"seed {seed} {norm} batch {batch_size}: {accuracy:.4f}")
    row = {
        "design": args.design,
        "seed": seed,
        "norm": norm,
        "batch_size": batch_size,
        "steps": len(losses),
        "lr": lr,
        "values_per_statistic": values_per_statistic(args.design, batch_size),
        "test_accuracy_quarter": round(quarter, 6),
        "test_accuracy": round(accuracy, 6),
        "final_train_loss": round(final_loss(losses), 6),
        "ms_per_step": round(1e3 * seconds / len(losses), 3),
        "diverged": int(not math.isfinite(losses[-1])),
    }
    return row, losses


def drops(rows: list[dict], norm: str, largest: int, smallest: int) -> list[float]:
    """Per seed, test accuracy at the largest batch minus at the smallest."""
    high = per_seed(rows, "test_accuracy", norm=norm, batch_size=largest)
    low = per_seed(rows, "test_accuracy", norm=norm, batch_size=smallest)
    return [h - lo for h, lo in zip(high, low)]


def comparisons(args: argparse.Namespace, rows: list[dict]) -> list[Comparison]:
    """The claims this run can judge (those whose norms and batch sizes it ran)."""
    found: list[Comparison] = []
    smallest, largest = args.batch_sizes[0], args.batch_sizes[-1]
    if {"bn", "brn"} <= set(args.norms):
        for b in (2, 4):
            if b in args.batch_sizes:
                found.append(
                    Comparison(
                        f"BRN beats BN at batch {b} (test accuracy)",
                        per_seed(rows, "test_accuracy", norm="brn", batch_size=b),
                        per_seed(rows, "test_accuracy", norm="bn", batch_size=b),
                        EFFECT,
                        ("BRN", "BN"),
                    )
                )
    for other in ("gn", "ln"):
        if {"bn", other} <= set(args.norms) and largest > smallest:
            found.append(
                Comparison(
                    f"BN loses more than {other.upper()} from batch {largest} to {smallest} "
                    "(drop in test accuracy)",
                    drops(rows, "bn", largest, smallest),
                    drops(rows, other, largest, smallest),
                    EFFECT,
                    ("BN drop", f"{other.upper()} drop"),
                )
            )
    return found


def settings(args: argparse.Namespace, seeds: list[int]) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"design {args.design} (width {args.width}); norms {', '.join(args.norms)}; batch sizes "
        f"{', '.join(map(str, args.batch_sizes))}; {args.steps} steps per run; SGD momentum 0.9, "
        f"lr {args.lr:g} × batch / {REFERENCE_BATCH} after a 5% warm-up; seeds "
        f"{', '.join(map(str, seeds))}"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings, test accuracy (mean ± std over the seeds) by norm and batch size, the
    fewest values per statistic, and the verdicts."""
    seeds = sorted({r["seed"] for r in rows})

    def cell(norm: str, b: int) -> str:
        runs = [r for r in rows if r["norm"] == norm and r["batch_size"] == b]
        diverged = sum(r["diverged"] for r in runs)
        text = mean_std([r["test_accuracy"] for r in runs])
        return text + (f" ({diverged} diverged)" if diverged else "")

    accuracy = markdown_table(
        ["test accuracy", *(f"batch {b}" for b in args.batch_sizes)],
        [[norm, *(cell(norm, b) for b in args.batch_sizes)] for norm in args.norms],
    )
    values = ", ".join(
        f"{values_per_statistic(args.design, b)} at batch {b}" for b in args.batch_sizes
    )
    total = sum(r["ms_per_step"] * r["steps"] for r in rows) / 1e3
    return "\n".join(
        [
            f"# Small batches, design {args.design}",
            "",
            f"{settings(args, seeds)}. Data: {data}. Tested in eval mode. Fewest values per "
            f"batch statistic: {values}. Training time {total:.0f} s in all.",
            "",
            "Test accuracy, mean ± std over the seeds:",
            "",
            accuracy,
            "",
            verdict_table(comparisons(args, rows)),
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy and final training loss against batch size (log2 axis), mean ± std error
    bars over the seeds, one line per norm; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    accuracy_ax, loss_ax = fig.subplots(1, 2)
    for i, norm in enumerate(args.norms):
        for ax, key in ((accuracy_ax, "test_accuracy"), (loss_ax, "final_train_loss")):
            runs = [per_seed(rows, key, norm=norm, batch_size=b) for b in args.batch_sizes]
            plot_mean_std(ax, args.batch_sizes, runs, i, norm)
    for ax in (accuracy_ax, loss_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
        ax.set_xlabel("batch size (equal updates)")
        ax.grid(alpha=0.3)
    accuracy_ax.set(ylabel="test accuracy (inference statistics)")
    loss_ax.set(ylabel="training loss, last tenth of the steps", yscale="log")
    fig.legend(*accuracy_ax.get_legend_handles_labels(), loc="outside right upper")
    fig.suptitle(f"Small batches, design {args.design}, {args.steps} steps per run")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train, test, data = load_data(args, min_train=max(args.batch_sizes), flatten=False)
    print(settings(args, args.seeds))
    warm_up(args, train)
    per_run = len(args.norms) * len(args.batch_sizes) * args.steps
    with tqdm(total=per_run * len(args.seeds), desc="steps", dynamic_ncols=True) as bar:

        def run_seed(seed: int) -> list[dict]:
            if bar.n >= bar.total:  # a seed beyond the planned ones
                bar.total += per_run
            return [
                train_one(args, norm, b, seed, train, test, bar)[0]
                for b in args.batch_sizes
                for norm in args.norms
            ]

        rows = run_seeds(
            args.seeds, run_seed, lambda rows: comparisons(args, rows), args.more_seeds
        )
    markdown = summary_markdown(args, rows, data)
    write_outputs(Path(args.out), "small_batch", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_verdicts(argv, parse_args, run, comparisons)


if __name__ == "__main__":
    sys.exit(main())
