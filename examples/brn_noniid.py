"""Batch renormalization with non-i.i.d. batches (SPEC §6.3, seed 000): BN vs BRN.

    python -m tinynorm.examples.brn_noniid [--quick] [--classes-per-batch 2] [--seeds 0 1 2]
        [--dataset mnist|fashion-mnist] [--out DIR]

The claim (Ioffe 2017, via seed 000): when every mini-batch holds examples of only a few
classes, batch norm trains on batch statistics that are far from the whole data's, its running
averages (used at test time) describe no batch it ever saw, and its inference accuracy
collapses; batch renormalization corrects the batch statistics towards the running averages
during training, so that training and inference compute the same function, and it holds. The
seed's numbers (ImageNet, non-i.i.d. batches): BN about 67 %, BRN 77.4 %, and BRN is "partially
efficient" and "requires further enhancements": it does not reach what i.i.d. batches give.

The model is the main job's CNN (`examples/mnist.py`, `build_model`). For each seed, three
copies start from the same weights and train in lockstep, for the same steps, by SGD with
momentum 0.9:

- `bn`: BatchNorm2d on non-i.i.d. batches from `tinynorm.data.ClassBatchSampler`: each batch
  holds `--classes-per-batch` (k) classes, split evenly;
- `brn`: BatchRenorm2d on the very same non-i.i.d. batches;
- `bn_iid`: the reference, BatchNorm2d on ordinary shuffled (i.i.d.) batches.

Every `--eval-every` steps each is tested in eval mode, i.e. with its inference statistics (the
running averages), on the same test images, which come from all ten classes. The seed sets the
initial weights and both batch orders.

Two claims, each on the final test accuracies a_s of the seeds s, judged by `verdicts.py`'s
rule (gain = mean(A) − mean(B), noise = std(A) + std(B), effect 0.01, one point; 5 seeds where
|gain| < 2 std):
- "BRN beats BN on non-i.i.d. batches": A = BRN, B = BN;
- "BRN does not close the whole gap to BN on i.i.d. batches" (the seed's "requires further
  enhancements"): A = BN on i.i.d. batches, B = BRN; "not reproduced" then means that BRN is
  within a point of it, the spread ruling out a larger gap.

Batch renorm's limits are constant from the first step (rmax 3, dmax 5, the paper's final
values): `build_model("brn", 0)`, the main job's schedule scaled to zero steps. The scaled
schedule of `small_batch` starts with an eighth of the run as plain batch norm, which here
is exactly the failure under test; measured (600 steps, width 8, k = 2, 1,000 test images),
with it BRN collapsed like BN (0.085 both), with constant limits it held (0.934; k = 1: 0.804).
The running averages that the corrections aim at settle within a few dozen steps (momentum 0.1).

Outputs, in `--out` (written atomically): `brn_noniid.csv` (seed, step and the three test
accuracies), `brn_noniid.md` (the settings, mean ± std over the seeds of the final and best
test accuracy, the verdicts) and `brn_noniid.png` (accuracy against steps, the mean over the
seeds with a band of ± one std, if matplotlib is installed). The last line printed is
`final test accuracy (inference statistics, mean ± std over N seeds), k classes per batch: BN
…, BRN …; BN on i.i.d. batches …; BRN beats BN: <verdict>`.

Cost, measured on 2 CPU cores (2026-11-23), the three models together: about 14-25 steps/s at
width 8, and at width 16 16 steps/s of training plus the evaluations on 10,000 test images, on
an idle machine: 2 min 15 s a seed at full length. So `--quick` (2 seeds, 300 steps, width 8,
1,000 test images; as much training as one seed of 600 steps) takes about 25-45 seconds (3.5
minutes on cores shared with other jobs, 2026-11-28), and the full run (3 seeds, 2,000 steps,
width 16, the full test set) about 7 minutes, 11 where the rule asks for 5 seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
from tinynorm.data import ClassBatchSampler, DataLoader
from tinynorm.files import atomic_write

from .common import (
    check_finite_loss,
    endless,
    evaluate,
    experiment_parser,
    load_data,
    markdown_table,
    parse_experiment,
    plot_band,
    run_experiment,
    train_step,
    write_outputs,
)
from .mnist import build_model
from .verdicts import Comparison, mean_std, per_seed, run_seeds, verdict_table

MODELS = {"bn": "BN", "brn": "BRN", "bn_iid": "BN, i.i.d. batches"}
QUICK = dict(steps=300, eval_every=50, width=8, seeds=[0, 1], test_limit=1_000)
FULL = dict(steps=2_000, eval_every=250, width=16)
EFFECT = 0.01  # the smallest difference in test accuracy either claim is taken to mean


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "brn_noniid",
        "BatchNorm vs BatchRenorm in the main job's CNN trained on batches of only "
        "k classes, tested with inference statistics (and BN on i.i.d. batches for reference).",
        "a short run: 2 seeds, 300 steps, width 8, evaluation every 50, 1,000 test images",
    )
    p.add_argument("--steps", type=int, help="training steps (default: 2,000)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: 250)")
    p.add_argument(
        "--classes-per-batch",
        type=int,
        default=2,
        metavar="K",
        help="classes in each non-i.i.d. batch (default: 2)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (default: 0.02)")
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    args = parse_experiment(p, argv, QUICK, FULL)
    if args.steps < 1 or args.eval_every < 1 or args.width < 1 or not args.lr > 0:
        p.error("--steps, --eval-every and --width must be >= 1 and --lr > 0")
    if args.batch_size < 2 * args.classes_per_batch:
        p.error("--batch-size must be at least 2 examples per class of a batch")
    return args


def train(args: argparse.Namespace, seed: int, train_data, test_data) -> list[dict]:
    """Train the three models of `seed` in lockstep; the CSV rows (seed, step and the three
    test accuracies at step 0, every `eval_every` steps and the last)."""
    models = {}
    for key in MODELS:
        tn.manual_seed(seed)  # the same initial weights for the three
        # total_steps 0: batch renorm's limits are constant from the first step (see above)
        models[key] = build_model("brn" if key == "brn" else "bn", 0, args.width)
    optimizers = {
        k: tn.optim.SGD(list(m.parameters()), lr=args.lr, momentum=0.9) for k, m in models.items()
    }
    sampler = ClassBatchSampler(
        train_data[1], args.batch_size, args.classes_per_batch, seed=seed, drop_last=True
    )
    noniid = endless(DataLoader(train_data, batch_sampler=sampler))
    iid = endless(
        DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=seed)
    )

    def row(step: int) -> dict:
        accuracy = {
            f"test_accuracy_{k}": round(evaluate(m, test_data), 6) for k, m in models.items()
        }
        return {"seed": seed, "step": step, **accuracy}

    rows = [row(0)]
    bar = tqdm(range(1, args.steps + 1), desc=f"seed {seed}", unit="step", dynamic_ncols=True)
    for step in bar:
        batch = next(noniid)
        for key, (x, y) in (("bn", batch), ("brn", batch), ("bn_iid", next(iid))):
            loss = train_step(models[key], optimizers[key], x, y)
            check_finite_loss(loss, f"step {step} ({MODELS[key]}, seed {seed})", args.lr)
        if step % args.eval_every == 0 or step == args.steps:
            rows.append(row(step))
            bar.set_postfix({MODELS[k]: f"{rows[-1][f'test_accuracy_{k}']:.4f}" for k in MODELS})
    return rows


def final_accuracy(rows: list[dict], key: str) -> list[float]:
    """The final test accuracy of model `key`, one per seed (in seed order)."""
    last = max(r["step"] for r in rows)
    return per_seed(rows, f"test_accuracy_{key}", step=last)


def comparisons(rows: list[dict]) -> list[Comparison]:
    """The two claims on the final test accuracies (see the module's docstring)."""
    final = {k: final_accuracy(rows, k) for k in MODELS}
    return [
        Comparison(
            "BRN beats BN on non-i.i.d. batches",
            final["brn"],
            final["bn"],
            EFFECT,
            ("BRN", "BN"),
        ),
        Comparison(
            "BRN does not close the whole gap to BN on i.i.d. batches",
            final["bn_iid"],
            final["brn"],
            EFFECT,
            ("BN i.i.d.", "BRN"),
        ),
    ]


def seeds_of(rows: list[dict]) -> list[int]:
    return sorted({r["seed"] for r in rows})


def counted(seeds: list[int]) -> str:
    """'1 seed', '3 seeds'."""
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}; batch {args.batch_size} of {args.classes_per_batch} "
        f"class{'es' if args.classes_per_batch > 1 else ''} per batch; SGD momentum 0.9, lr "
        f"{args.lr:g}, {args.steps:,} steps"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str, seconds: float) -> str:
    """The settings, final and best test accuracy of the three models (mean ± std over the
    seeds), and the verdicts."""

    def best(key: str) -> list[float]:
        return [max(r[f"test_accuracy_{key}"] for r in rows if r["seed"] == s) for s in seeds]

    seeds = seeds_of(rows)
    table = markdown_table(
        ["model", "batches", "final test accuracy", "best test accuracy"],
        [
            [
                MODELS[k].split(",")[0],
                "i.i.d." if k == "bn_iid" else f"{args.classes_per_batch} per batch",
                mean_std(final_accuracy(rows, k)),
                mean_std(best(k)),
            ]
            for k in MODELS
        ],
    )
    return "\n".join(
        [
            "# Batch renormalization with non-i.i.d. batches, with tinynorm",
            "",
            f"{settings(args)}; seeds {', '.join(map(str, seeds))}. Data: {data}; evaluated "
            f"every {args.eval_every:,} steps in eval mode (inference statistics). BRN: constant "
            f"limits rmax 3, dmax 5. Time: {seconds:.0f} s ({counted(seeds)}, the three models, "
            "training and evaluation). Mean ± std over the seeds.",
            "",
            table,
            "",
            verdict_table(comparisons(rows)),
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy against steps, the mean over the seeds with a ± std band per model; False
    without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    seeds = seeds_of(rows)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = [r["step"] for r in rows if r["seed"] == seeds[0]]
    for i, (key, label) in enumerate(MODELS.items()):
        curves = np.array(
            [[r[f"test_accuracy_{key}"] for r in rows if r["seed"] == s] for s in seeds]
        )
        plot_band(ax, steps, curves, i, label)
    ax.set(
        xlabel="training step",
        ylabel="test accuracy (inference statistics)",
        title=f"batches of {args.classes_per_batch} class(es), {args.batch_size} examples; "
        f"mean ± std over {counted(seeds)}",
        ylim=(0, 1),
    )
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train_data, test_data, data = load_data(args, min_train=args.batch_size)
    print(settings(args))
    began = time.perf_counter()
    rows = run_seeds(
        args.seeds,
        lambda seed: train(args, seed, train_data, test_data),
        comparisons,
        args.more_seeds,
    )
    markdown = summary_markdown(args, rows, data, time.perf_counter() - began)
    write_outputs(Path(args.out), "brn_noniid", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: the three models' final test accuracies and the first verdict."""
    final = {k: mean_std(final_accuracy(rows, k)) for k in MODELS}
    return (
        f"final test accuracy (inference statistics, mean ± std over {counted(seeds_of(rows))}"
        f"), {args.classes_per_batch} classes per batch: BN {final['bn']}, BRN "
        f"{final['brn']}; BN on i.i.d. batches {final['bn_iid']}; BRN beats BN: "
        f"{comparisons(rows)[0].verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
