"""The main job: train a small CNN with a chosen normalization layer on MNIST.

    python -m tinynorm.examples.mnist [--norm bn] [--epochs 6] ...

The network is conv(5×5) → norm → ReLU → max-pool, twice, then a linear classifier. With no
arguments it trains offline on the bundled mnist-lite digits (10,000 training images) and ends
with the accuracy on the official 10,000-image MNIST test set, printed last as
`test accuracy: 0.xxxx`.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
import time

from tqdm import tqdm

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.data import MNIST, DataLoader, FashionMNIST, IDXError
from tinynorm.files import atomic_write
from tinynorm.nn.utils import weight_norm

from .common import evaluate

NORMS = ("none", "bn", "brn", "ln", "in", "gn", "mobn", "wn", "bin", "sn", "bln")
NORM_HELP = (
    "none: no normalization; bn: BatchNorm2d; brn: BatchRenorm2d; ln: LayerNorm over (C, H, W); "
    "in: InstanceNorm2d (affine); gn: GroupNorm with 4 groups; mobn: mean-only batch norm; "
    "wn: weight normalization of the convolutions and the classifier (with mean-only batch "
    "norm, as in Salimans & Kingma); bin: BatchInstanceNorm2d; sn: SwitchableNorm2d; "
    "bln: BatchLayerNorm"
)


def norm_layer(kind: str, channels: int, size: int, total_steps: int) -> nn.Module:
    """The normalization layer `kind` for a (N, channels, size, size) feature map."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "brn":  # the paper's schedule (5k/40k/25k steps) scaled to this run's length
        return nn.BatchRenorm2d(
            channels,
            warmup_steps=total_steps // 8,
            rmax_steps=total_steps,
            dmax_steps=total_steps * 5 // 8,
        )
    if kind == "ln":
        return nn.LayerNorm((channels, size, size))
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "gn":
        return nn.GroupNorm(4, channels)
    if kind in ("mobn", "wn"):
        return nn.MeanOnlyBatchNorm2d(channels)
    if kind == "bin":
        return nn.BatchInstanceNorm2d(channels)
    if kind == "sn":
        return nn.SwitchableNorm2d(channels)
    if kind == "bln":
        return nn.BatchLayerNorm(channels)
    return nn.Identity()


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
        "the bundled mnist-lite digits) and report the test accuracy.",
    )
    p.add_argument("--norm", choices=NORMS, default="bn", help=NORM_HELP + " (default: bn)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default: 64)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 0.02 for sgd, 0.002 for adam)",
    )
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="sgd (momentum 0.9, cosine schedule) or adam (default: sgd)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (NumPy + Numba) or cuda (CuPy + Numba CUDA; needs tinynorm[gpu])",
    )
    p.add_argument(
        "--dataset",
        choices=("mnist", "fashion-mnist"),
        default="mnist",
        help="mnist (falls back to the bundled mnist-lite) or fashion-mnist",
    )
    p.add_argument(
        "--data-dir",
        help="directory holding the four IDX files (overrides "
        "$TINYNORM_DATA, the cache and the download)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for initialization and shuffling")
    p.add_argument(
        "--save",
        metavar="PATH",
        help="write a checkpoint after every epoch "
        "(atomically: a temporary file renamed into place)",
    )
    p.add_argument("--resume", metavar="PATH", help="continue training from a checkpoint")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate (the model of --resume, else a fresh one)",
    )
    p.add_argument(
        "--log", metavar="PATH", help="per-epoch metrics as CSV, or JSON if PATH ends in .json"
    )
    p.add_argument(
        "--train-limit",
        type=int,
        metavar="N",
        help="train on the first N training images only (quick runs)",
    )
    p.add_argument(
        "--test-limit",
        type=int,
        metavar="N",
        help="evaluate on the first N test images only (quick runs)",
    )
    args = p.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1:
        p.error("--epochs must be >= 0 and --batch-size >= 1")
    if args.lr is None:
        args.lr = 0.02 if args.optimizer == "sgd" else 0.002
    return args


def load_data(args):
    kind = MNIST if args.dataset == "mnist" else FashionMNIST
    train = kind(root=args.data_dir, train=True)
    test = kind(root=args.data_dir, train=False)
    x_train, y_train = train.normalized(), train.labels
    if args.train_limit:
        x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test, y_test = test.normalized(), test.labels
    if args.test_limit:
        x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    return (x_train, y_train), (x_test, y_test)


def save_checkpoint(path: str, state: dict) -> None:
    """Pickle `state` to `path` atomically (a temporary file renamed into place)."""
    with atomic_write(path) as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_checkpoint(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    keys = {"model", "optimizer", "schedule", "epoch", "norm", "log"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ValueError(f"{path} is not a tinynorm MNIST checkpoint")
    return state


def write_log(path: str, rows: list[dict]) -> None:
    """Per-epoch metrics as JSON (a .json path) or CSV, written atomically."""
    with atomic_write(path, "w", newline="") as f:
        if path.endswith(".json"):
            json.dump(rows, f, indent=1)
        elif rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def run(args: argparse.Namespace) -> float:
    tn.manual_seed(args.seed)
    train, test = load_data(args)
    steps_per_epoch = -(-len(train[1]) // args.batch_size)
    model = build_model(args.norm, max(1, args.epochs * steps_per_epoch))
    params = list(model.parameters())
    if args.optimizer == "sgd":
        opt = tn.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = tn.optim.Adam(params, lr=args.lr)
    schedule = tn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs))
    model.to(args.device)  # before the optimizer state is loaded, so it lands on the device too
    start, rows = 0, []
    if args.resume:
        state = load_checkpoint(args.resume)
        if state["norm"] != args.norm:
            raise ValueError(f"{args.resume} holds a '{state['norm']}' model, not '{args.norm}'")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, rows = state["epoch"], state["log"]
        print(f"resumed from {args.resume} after epoch {start}")

    if args.eval_only:
        return evaluate(model, test, args.device)
    print(
        f"model: {args.norm}, {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{args.optimizer} lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs"
    )
    accuracy = evaluate(model, test, args.device) if start >= args.epochs else None
    for epoch in range(start, args.epochs):
        began = time.perf_counter()
        loader = DataLoader(
            train, batch_size=args.batch_size, shuffle=True, seed=args.seed * 1000 + epoch
        )
        loss_sum = correct = seen = 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{args.epochs}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = x.to(args.device), y.to(args.device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = len(y)
            loss_sum += loss.item() * n
            correct += int((logits.argmax(dim=1).numpy() == y.numpy()).sum())
            seen += n
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        schedule.step()
        accuracy = evaluate(model, test, args.device)
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
        if args.save:
            save_checkpoint(
                args.save,
                {
                    "model": {k: v.numpy() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "schedule": schedule.state_dict(),
                    "epoch": epoch + 1,
                    "norm": args.norm,
                    "log": rows,
                },
            )
        if args.log:
            write_log(args.log, rows)
    return accuracy


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        accuracy = run(args)
    except (IDXError, OSError, ValueError, KeyError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"test accuracy: {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
