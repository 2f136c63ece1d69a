"""Batch renormalization with non-i.i.d. batches (SPEC §6.3, seed 000): BN vs BRN.

    python -m tinynorm.examples.brn_noniid [--quick] [--classes-per-batch 2] [--out DIR]

The claim (Ioffe 2017, via seed 000): when every mini-batch holds examples of only a few
classes, batch norm trains on batch statistics that are far from the whole data's, its running
averages (used at test time) describe no batch it ever saw, and its inference accuracy
collapses; batch renormalization corrects the batch statistics towards the running averages
during training, so that training and inference compute the same function, and it holds.

The model is the main job's CNN (`examples/mnist.py`, `build_model`). Three copies start from
the same weights and train in lockstep, for the same steps, by SGD with momentum 0.9:

- `bn`: BatchNorm2d on non-i.i.d. batches from `tinynorm.data.ClassBatchSampler`: each batch
  holds `--classes-per-batch` (k) classes, split evenly;
- `brn`: BatchRenorm2d on the very same non-i.i.d. batches;
- `bn_iid`: the reference, BatchNorm2d on ordinary shuffled (i.i.d.) batches.

Every `--eval-every` steps each is tested in eval mode, i.e. with its inference statistics (the
running averages), on the same test images, which come from all ten classes.

Batch renorm's limits are constant from the first step (rmax 3, dmax 5, the paper's final
values): `build_model("brn", 0)`, the main job's schedule scaled to zero steps. The scaled
schedule of `brn_small_batch` starts with an eighth of the run as plain batch norm, which here
is exactly the failure under test; measured (600 steps, width 8, k = 2, 1,000 test images),
with it BRN collapsed like BN (0.085 both), with constant limits it held (0.934; k = 1: 0.804).
The running averages that the corrections aim at settle within a few dozen steps (momentum 0.1).

Outputs, in `--out` (written atomically): `brn_noniid.csv` (step and the three test
accuracies), `brn_noniid.md` (the settings and a summary table) and `brn_noniid.png` (accuracy
against steps, if matplotlib is installed). The last line printed is
`final test accuracy (inference statistics), k classes per batch: BN 0.xxxx, BRN 0.xxxx; BN on
i.i.d. batches 0.xxxx`.

Cost, measured on 2 CPU cores (2026-11-23), the three models together: about 14-25 steps/s at
width 8, and at width 16 16 steps/s of training plus the evaluations on 10,000 test images, on
an idle machine. So `--quick` (600 steps, width 8, 1,000 test images) takes about 25-45
seconds, and the full run (2,000 steps, width 16, the full test set) about 2.5 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    run_experiment,
    train_step,
    write_outputs,
)
from .mnist import build_model

MODELS = {"bn": "BN", "brn": "BRN", "bn_iid": "BN, i.i.d. batches"}
QUICK = dict(steps=600, eval_every=100, width=8, train_limit=10_000, test_limit=1_000)
FULL = dict(steps=2_000, eval_every=250, width=16, train_limit=None, test_limit=None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "brn_noniid",
        "BatchNorm vs BatchRenorm in the main job's CNN trained on batches of only "
        "k classes, tested with inference statistics (and BN on i.i.d. batches for reference).",
        "a short run: 600 steps, width 8, evaluation every 100, 1,000 test images",
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


def train(args: argparse.Namespace, train_data, test_data) -> tuple[list[dict], float]:
    """Train the three models in lockstep; the CSV rows and the training time in seconds."""
    models = {}
    for key in MODELS:
        tn.manual_seed(args.seed)  # the same initial weights for the three
        # total_steps 0: batch renorm's limits are constant from the first step (see above)
        models[key] = build_model("brn" if key == "brn" else "bn", 0, args.width)
    optimizers = {
        k: tn.optim.SGD(list(m.parameters()), lr=args.lr, momentum=0.9) for k, m in models.items()
    }
    sampler = ClassBatchSampler(
        train_data[1], args.batch_size, args.classes_per_batch, seed=args.seed, drop_last=True
    )
    noniid = endless(DataLoader(train_data, batch_sampler=sampler))
    iid = endless(
        DataLoader(
            train_data, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=args.seed
        )
    )

    def row(step: int) -> dict:
        accuracy = {
            f"test_accuracy_{k}": round(evaluate(m, test_data), 6) for k, m in models.items()
        }
        return {"step": step, **accuracy}

    rows = [row(0)]
    began = time.perf_counter()
    bar = tqdm(range(1, args.steps + 1), desc="steps", unit="step", dynamic_ncols=True)
    for step in bar:
        batch = next(noniid)
        for key, (x, y) in (("bn", batch), ("brn", batch), ("bn_iid", next(iid))):
            loss = train_step(models[key], optimizers[key], x, y)
            check_finite_loss(loss, f"step {step} ({MODELS[key]})", args.lr)
        if step % args.eval_every == 0 or step == args.steps:
            rows.append(row(step))
            bar.set_postfix({MODELS[k]: f"{rows[-1][f'test_accuracy_{k}']:.4f}" for k in MODELS})
    return rows, time.perf_counter() - began


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}; batch {args.batch_size} of {args.classes_per_batch} "
        f"class{'es' if args.classes_per_batch > 1 else ''} per batch; SGD momentum 0.9, lr "
        f"{args.lr:g}, {args.steps:,} steps; seed {args.seed}"
    )


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str, seconds: float) -> str:
    """The settings, then final and best test accuracy of the three models."""
    table = markdown_table(
        ["model", "batches", "final test accuracy", "best test accuracy"],
        [
            [
                MODELS[k].split(",")[0],
                "i.i.d." if k == "bn_iid" else f"{args.classes_per_batch} per batch",
                f"{rows[-1][f'test_accuracy_{k}']:.4f}",
                f"{max(r[f'test_accuracy_{k}'] for r in rows):.4f}",
            ]
            for k in MODELS
        ],
    )
    return "\n".join(
        [
            "# Batch renormalization with non-i.i.d. batches, with tinynorm",
            "",
            f"{settings(args)}. Data: MNIST, {data}; evaluated every {args.eval_every:,} steps "
            "in eval mode (inference statistics). BRN: constant limits "
            f"rmax 3, dmax 5. Training time: {seconds:.0f} s ({args.steps / seconds:.0f} steps/s, "
            "the three models).",
            "",
            table,
            "",
        ]
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Test accuracy against steps, one line per model; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    steps = [r["step"] for r in rows]
    for key, style in zip(MODELS, ("-", "-", "--")):
        ax.plot(steps, [r[f"test_accuracy_{key}"] for r in rows], style, label=MODELS[key])
    ax.set(
        xlabel="training step",
        ylabel="test accuracy (inference statistics)",
        title=f"batches of {args.classes_per_batch} class(es), {args.batch_size} examples",
        ylim=(0, 1),
    )
    ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> dict[str, float]:
    train_data, test_data, data = load_data(args, min_train=args.batch_size)
    print(settings(args))
    rows, seconds = train(args, train_data, test_data)
    markdown = summary_markdown(args, rows, data, seconds)
    write_outputs(Path(args.out), "brn_noniid", rows, markdown, lambda p: plot(args, rows, p))
    return {k: rows[-1][f"test_accuracy_{k}"] for k in MODELS}


def summary_line(args: argparse.Namespace, final: dict[str, float]) -> str:
    """The last line printed: the three models' final test accuracies."""
    return (
        f"final test accuracy (inference statistics), {args.classes_per_batch} classes per batch: "
        f"BN {final['bn']:.4f}, BRN {final['brn']:.4f}; BN on i.i.d. batches {final['bn_iid']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
