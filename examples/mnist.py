"""The main job: train a small CNN with a chosen normalization layer on MNIST.

    python -m tinynorm.examples.mnist [--norm bn] [--epochs 6] ...
    mpiexec -n 2 python -m mpi4py -m tinynorm.examples.mnist --distributed [--sync-bn] ...

The network is conv(5×5) → norm → ReLU → max-pool, twice, then a linear classifier. With no
arguments it trains offline on the bundled mnist-lite digits (10,000 training images) and ends
with the accuracy on the official 10,000-image MNIST test set, printed last as
`test accuracy: 0.xxxx`.

With --distributed (under mpiexec; `pip install -e ".[distributed]"`) every rank trains a
replica (`nn.parallel.DistributedDataParallel`) on its share of each global batch of
--batch-size × ranks examples (`data.DistributedSampler`: the same permutation as one process,
so -n 2 --batch-size 32 sees the batches of one process at 64); --sync-bn pools the batch
statistics of all ranks (`nn.SyncBatchNorm`). Rank 0 alone prints and writes the checkpoint and
the log; an error on any rank ends every rank.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
import tinynorm.distributed as dist
import tinynorm.nn.functional as F
from tinynorm import backend, nn
from tinynorm.data import MNIST, DataLoader, DistributedSampler, FashionMNIST
from tinynorm.files import atomic_write
from tinynorm.nn.utils import weight_norm
from tinynorm.variants import BY_KEY

from .common import (
    DATASETS,
    NonFiniteLossError,
    add_data_options,
    check_finite_loss,
    check_interrupt,
    evaluate,
    positive_int,
    run_distributed,
    run_experiment,
)

PROGRAM = "tinynorm.examples.mnist"
OPTIMIZERS = ("sgd", "adam")
FIXED = ("norm", "optimizer", "width")  # what a resumed run cannot change
DEFAULTS = {"norm": "bn", "optimizer": "sgd", "width": 16, "epochs": 6, "batch_size": 64}
DEFAULTS |= {"seed": 0, "dataset": "mnist"}  # a fresh run's; a resumed run takes the saved ones


def is_count(value, least: int = 1) -> bool:
    return type(value) is int and value >= least


CONFIG_CHECKS = {  # what a checkpoint records of its run, and what each must be
    "norm": lambda v: v in NORMS,
    "optimizer": lambda v: v in OPTIMIZERS,
    "width": is_count,
    "lr": lambda v: isinstance(v, float) and math.isfinite(v) and v > 0,
    "batch_size": is_count,
    "epochs": lambda v: is_count(v, 0),
    "seed": lambda v: type(v) is int,
    "dataset": lambda v: v in DATASETS,
}
NORMS = ("none", *BY_KEY, "wn")
# training steps between reads of the loss and accuracy back to the host: free on the CPU, a
# device sync on a GPU (so there a NaN loss is caught up to 20 steps late)
SYNC_EVERY = {"cpu": 1, "cuda": 20}
NORM_HELP = (
    "none: no normalization; "
    + "; ".join(f"{key}: {variant.summary}" for key, variant in BY_KEY.items())
    + "; wn: weight normalization of the convolutions and the classifier (with mean-only batch "
    "norm, as in Salimans & Kingma)"
)


def norm_layer(kind: str, channels: int, size: int, total_steps: int) -> nn.Module:
    """The normalization layer `kind` for a (N, channels, size, size) feature map (`wn`: the
    mean-only batch norm that goes with weight normalization). Batch renorm's schedule is the
    paper's scaled to a run of `total_steps` (`BatchRenorm2d.scale_schedule`)."""
    if kind == "none":
        return nn.Identity()
    layer = BY_KEY["mobn" if kind == "wn" else kind].make(nn, (0, channels, size, size))
    if isinstance(layer, nn.BatchRenorm2d):
        layer.scale_schedule(total_steps)
    return layer


def build_model(kind: str, total_steps: int, width: int = 16) -> nn.Sequential:
    """conv → norm → ReLU → pool, twice, then a classifier, for 1×28×28 images."""
    conv1 = nn.Conv2d(1, width, 5, padding=2)
    conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
    head = nn.Linear(2 * width * 7 * 7, 10)
    if kind == "wn":
        for layer in (conv1, conv2, head):
            weight_norm(layer)
    return nn.Sequential(
        conv1,
        norm_layer(kind, width, 28, total_steps),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv2,
        norm_layer(kind, 2 * width, 14, total_steps),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        head,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tinynorm.examples.mnist",
        description="Train a CNN with a chosen normalization layer on MNIST (offline by default: "
        "the bundled mnist-lite digits) and report the test accuracy. With --resume, every "
        "option left out is taken from the checkpoint.",
    )
    p.add_argument("--norm", choices=NORMS, help=NORM_HELP + " (default: bn)")
    p.add_argument("--width", type=positive_int, help="channels of the first conv (default: 16)")
    p.add_argument("--epochs", type=int, help="training epochs in all (default: 6)")
    p.add_argument("--batch-size", type=positive_int, help="training batch size (default: 64)")
    p.add_argument("--lr", type=float, help="base learning rate (default: 0.02 sgd, 0.002 adam)")
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        help="sgd (Nesterov momentum 0.9, weight decay 5e-4) or adam (default: sgd); both with "
        "a cosine schedule: epoch e of E trains at lr * (1 + cos(pi * (e - 1) / E)) / 2",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (NumPy + Numba) or cuda (CuPy + Numba CUDA; needs tinynorm[gpu])",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="mnist (falls back to the bundled mnist-lite) or fashion-mnist (default: mnist)",
    )
    p.add_argument(
        "--data-dir",
        help="directory holding the four IDX files (overrides "
        "$TINYNORM_DATA, the cache and the download)",
    )
    p.add_argument("--seed", type=int, help="seed for initialization and shuffling (default: 0)")
    p.add_argument(
        "--save",
        metavar="PATH",
        help="write a checkpoint (tinynorm.save format) after every epoch, atomically; never "
        "one holding NaN or infinite values",
    )
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a checkpoint of --save: its weights, running statistics, optimizer "
        "state and options are restored, and training goes on with the epoch after the "
        "saved one, up to --epochs in all. The cosine schedule is over --epochs (so a larger "
        "--epochs continues on the longer schedule, e.g. 1 epoch saved, resumed with --epochs "
        "2: epoch 2 at half the base lr). An explicit --lr replaces the saved base lr; "
        "--batch-size, --seed and --dataset may change too. A different --norm, --optimizer "
        "or --width is an error before any training.",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate (the model of --resume, else a fresh one)",
    )
    p.add_argument(
        "--log", metavar="PATH", help="per-epoch metrics as CSV, or JSON if PATH ends in .json"
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the ranks of mpiexec (MPI, tinynorm[distributed]; NCCL with "
        "--device cuda): --batch-size per rank, rank 0 prints and writes",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="with --distributed: batch statistics over every rank's batch (SyncBatchNorm; "
        "batch renorm and mean-only batch norm synced alike)",
    )
    add_data_options(p)
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 0:
        p.error(f"argument --epochs: must be at least 0, got {args.epochs}")
    if args.sync_bn and not args.distributed:
        p.error("argument --sync-bn: needs --distributed")
    args.checkpoint = None  # the last complete checkpoint, for the message on Ctrl-C
    return args


def settle_options(args: argparse.Namespace, saved: dict | None) -> None:
    """Fill in every option left out: from the options saved in the resumed checkpoint, else
    the defaults. An explicit --norm, --optimizer or --width other than the saved one is a
    ValueError."""
    for key in FIXED:
        given = getattr(args, key)
        if saved and given is not None and given != saved[key]:
            raise ValueError(
                f"{args.resume} holds a model trained with --{key} {saved[key]}, not {given}; "
                f"resume it with --{key} {saved[key]} (or leave --{key} out)"
            )
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, saved[key] if saved else default)
    if args.lr is None:
        args.lr = saved["lr"] if saved else (0.02 if args.optimizer == "sgd" else 0.002)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")


def check_writable(path: str | None, option: str) -> None:
    """Fail before any training if `path` cannot be written (a directory, a file where a
    directory should be, a read-only place); missing directories are made at the first write."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path} is a directory")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ValueError(f"{option} {path} cannot be written: {err.strerror or err}") from None


def load_data(args):
    kind = MNIST if args.dataset == "mnist" else FashionMNIST
    train = kind(root=args.data_dir, train=True, download=not args.offline)
    test = kind(root=args.data_dir, train=False, download=not args.offline)
    x_train, y_train = train.normalized()[: args.train_limit], train.labels[: args.train_limit]
    x_test, y_test = test.normalized()[: args.test_limit], test.labels[: args.test_limit]
    return (x_train, y_train), (x_test, y_test)


def non_finite(tree, name: str = "") -> list[str]:
    """The names of the arrays in a nested dict/list of Tensors and arrays that hold a NaN or
    an infinity."""
    if isinstance(tree, dict):
        return [bad for k, v in tree.items() for bad in non_finite(v, f"{name}{k}/")]
    if isinstance(tree, (list, tuple)):
        return [bad for i, v in enumerate(tree) for bad in non_finite(v, f"{name}{i}/")]
    if isinstance(tree, (tn.Tensor, np.ndarray)):
        array = tree.numpy() if isinstance(tree, tn.Tensor) else tree
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return [name.rstrip("/")]
    return []


def read_checkpoint(path: str) -> dict:
    """A checkpoint of this program (tinynorm.load: data only), its options checked and every
    array finite; anything else is a ValueError naming `path`."""
    state = tn.load(path)
    if not (isinstance(state, dict) and state.get("program") == PROGRAM):
        raise ValueError(f"{path} is not a checkpoint of {PROGRAM} (written by its --save)")
    config = state.get("config")
    bad = [k for k, ok in CONFIG_CHECKS.items() if not (isinstance(config, dict) and k in config)]
    bad += [k for k, ok in CONFIG_CHECKS.items() if k not in bad and not ok(config[k])]
    if bad or not is_count(state.get("epoch"), 0) or not isinstance(state.get("log"), list):
        raise ValueError(f"{path} has missing or invalid entries: {bad or ['epoch/log']}")
    broken = non_finite({"model": state.get("model"), "optimizer": state.get("optimizer")})
    if broken:
        raise ValueError(
            f"{path} holds NaN or infinite values (in {', '.join(broken[:3])}): "
            "refusing to resume from it"
        )
    return state


def restore(path: str, saved: dict, model: nn.Module, opt: tn.optim.Optimizer) -> None:
    """Load the checkpoint's weights and optimizer state; a mismatch is a ValueError."""
    try:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(f"{path} does not fit this model and optimizer: {err}") from None


def write_log(path: str, rows: list[dict]) -> None:
    """Per-epoch metrics as JSON (a .json path) or CSV, written atomically."""
    with atomic_write(path, "w", newline="") as f:
        if path.endswith(".json"):
            json.dump(rows, f, indent=1)
        elif rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def save_checkpoint(args, epoch: int, model: nn.Module, opt: tn.optim.Optimizer, rows) -> None:
    """Write the state after `epoch` to --save, unless a weight has become NaN or infinite."""
    state = {
        "program": PROGRAM,
        "config": {k: getattr(args, k) for k in CONFIG_CHECKS},
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "log": rows,
    }
    broken = non_finite({"model": state["model"], "optimizer": state["optimizer"]})
    if broken:
        raise NonFiniteLossError(
            f"after epoch {epoch}, {', '.join(broken[:3])} hold NaN or infinite values: not "
            f"saved, {args.save} keeps the previous state; try a lower --lr "
            f"(this run used {args.lr:g})"
        )
    tn.save(state, args.save)
    args.checkpoint = f"{args.save} (after epoch {epoch})"


def run(args: argparse.Namespace) -> float:
    world = dist.group() if args.distributed else None
    writer = world is None or world.rank == 0
    check_writable(args.save if writer else None, "--save")
    check_writable(args.log if writer else None, "--log")
    saved = read_checkpoint(args.resume) if args.resume else None
    settle_options(args, saved and saved["config"])
    tn.manual_seed(args.seed)
    train, test = load_data(args)
    sampler = None
    if world is not None:
        sampler = DistributedSampler(len(train[1]), world.size, world.rank, seed=args.seed * 1000)
    steps_per_epoch = -(-len(sampler or train[1]) // args.batch_size)
    model = build_model(args.norm, max(1, args.epochs * steps_per_epoch), args.width)
    if args.sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    params = list(model.parameters())
    if args.optimizer == "sgd":
        opt = tn.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = tn.optim.Adam(params, lr=args.lr)
    model.to(args.device)  # before the optimizer state is loaded, so it lands on the device too
    start, rows = 0, []
    if saved:
        restore(args.resume, saved, model, opt)
        start, rows = saved["epoch"], saved["log"]
        args.checkpoint = f"{args.resume} (after epoch {start})"
        print(f"resumed from {args.checkpoint}")
    for group in opt.param_groups:  # the schedule runs from the base lr: --lr or the saved one
        group["lr"] = group["initial_lr"] = args.lr
    schedule = tn.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, args.epochs), last_epoch=start - 1
    )

    if args.eval_only or start >= args.epochs:
        if saved and not args.eval_only:
            print(f"{args.resume} holds {start} of --epochs {args.epochs}: evaluating only")
        return evaluate(model, test, args.device, group=world)
    batch = f"batch {args.batch_size}"
    if world is not None:
        batch = f"batch {args.batch_size} x {world.size} ranks{' (SyncBN)' * args.sync_bn}"
    print(
        f"model: {args.norm}, {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{args.optimizer} lr {args.lr:g}, {batch}, epochs {start + 1}-"
        f"{args.epochs} of {args.epochs}"
    )
    replica = model if world is None else nn.parallel.DistributedDataParallel(model, world)
    for epoch in range(start, args.epochs):
        began = time.perf_counter()
        if sampler is None:
            loader = DataLoader(
                train, batch_size=args.batch_size, shuffle=True, seed=args.seed * 1000 + epoch
            )
        else:
            sampler.set_epoch(epoch)  # the permutation of one process's epoch, shared out
            loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
        loss_sum = correct = seen = 0
        every = SYNC_EVERY[backend.check_device(args.device)]
        window_loss = window_correct = window_seen = 0  # device-side sums since the last read
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
            disable=not writer,
        )
        for step, (x, y) in enumerate(bar, 1):
            check_interrupt()
            x, y = x.to(args.device), y.to(args.device)
            logits = replica(x)
            loss = F.cross_entropy(logits, y)
            window_loss = window_loss + loss.data * len(y)
            window_correct = window_correct + (logits.data.argmax(axis=1) == y.data).sum()
            window_seen += len(y)
            if step % every == 0 or step == steps_per_epoch:  # read back, before the update
                where = f"epoch {epoch + 1}, step {step} of {steps_per_epoch}"
                check_finite_loss(float(window_loss) / window_seen, where, args.lr)
                loss_sum, correct = loss_sum + float(window_loss), correct + int(window_correct)
                seen += window_seen
                window_loss = window_correct = window_seen = 0
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
            opt.zero_grad()
            loss.backward()
            opt.step()
        schedule.step()
        if world is not None:  # the whole global batch's loss and accuracy
            loss_sum, correct, seen = world.all_reduce(np.array([loss_sum, correct, seen]))
        accuracy = evaluate(model, test, args.device, group=world)
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum / seen, 6),
                "train_accuracy": round(correct / seen, 6),
                "test_accuracy": round(accuracy, 6),
                "seconds": round(time.perf_counter() - began, 3),
            }
        )
        tqdm.write(
            f"epoch {epoch + 1}: train loss {loss_sum / seen:.4f}, "
            f"train accuracy {correct / seen:.4f}, test accuracy {accuracy:.4f}"
        )
        if args.save and writer:
            save_checkpoint(args, epoch + 1, model, opt, rows)
        if args.log and writer:
            write_log(args.log, rows)
    return accuracy


def interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C: where the last complete checkpoint is."""
    if args.checkpoint:
        return f"interrupted; the last complete checkpoint is {args.checkpoint}"
    return "interrupted (no checkpoint was written: --save PATH writes one after every epoch)"


def main(argv: list[str] | None = None) -> int:
    distributed = "--distributed" in (sys.argv[1:] if argv is None else argv)
    runner = run_distributed if distributed else run_experiment
    return runner(argv, parse_args, run, summary, interrupted=interrupted)


def summary(args: argparse.Namespace, accuracy: float) -> str:
    return f"test accuracy: {accuracy:.4f}"


if __name__ == "__main__":
    sys.exit(main())
