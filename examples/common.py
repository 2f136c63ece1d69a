"""What the experiments share: MNIST arrays, evaluation with inference statistics, training
batches that never run out, and the CSV / Markdown / PNG outputs, each written atomically."""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.data import MNIST, DataLoader, FashionMNIST, IDXError
from tinynorm.files import atomic_write

from .verdicts import MORE_SEEDS, SEEDS, sample_std, verdicts_line

Data = tuple[np.ndarray, np.ndarray]  # images (N, ...) float32, labels (N,) int64
DATASETS = ("mnist", "fashion-mnist")
TRAIN_IMAGES = 10_000  # the experiments' training set: mnist-lite's size, on either dataset

NO_MATPLOTLIB = (
    "matplotlib is not installed: pip install 'tinynorm[plot]' for the figure; "
    "CSV and Markdown written"
)


def experiment_parser(name: str, description: str, quick_help: str) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment shares: --quick, --seeds, --dataset,
    --out (default results/<name>/<dataset>), --data-dir, --offline, --train-limit and
    --test-limit."""
    p = argparse.ArgumentParser(prog=f"python -m tinynorm.examples.{name}", description=description)
    p.add_argument(
        "--quick", action="store_true", help=f"{quick_help} (explicit options still win)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="seeds, each giving every setting the same weights and batches (default: "
        f"{' '.join(map(str, SEEDS))}, and {' '.join(map(str, MORE_SEEDS))} too where a "
        "verdict's difference is within two standard deviations)",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="mnist",
        help="mnist (offline: the bundled mnist-lite) or fashion-mnist (default: mnist)",
    )
    p.add_argument("--out", help=f"output directory (default: results/{name}/<dataset>)")
    p.add_argument(
        "--data-dir",
        help="directory holding the four IDX files (overrides $TINYNORM_DATA, the cache, the "
        "system copy and the download)",
    )
    add_data_options(p)
    return p


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--offline, --train-limit N and --test-limit N (each limit a positive count)."""
    p.add_argument(
        "--offline",
        action="store_true",
        help="never try to download the full data set (as TINYNORM_OFFLINE=1 does)",
    )
    for which in ("train", "test"):
        p.add_argument(
            f"--{which}-limit",
            type=positive_int,
            metavar="N",
            help=f"use only the first N {which}ing images (quick runs)",
        )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_experiment(p: argparse.ArgumentParser, argv, quick: dict, full: dict):
    """Parse `argv`; every option left unset (None) takes its value from `quick` or `full`.
    `args.more_seeds` are the seeds to add where a verdict needs them: none where --seeds was
    given or in a quick run."""
    args = p.parse_args(argv)
    explicit_seeds = args.seeds is not None
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.seeds is None:
        args.seeds = list(SEEDS)
    args.more_seeds = () if explicit_seeds or args.quick else MORE_SEEDS
    if args.out is None:
        args.out = f"results/{p.prog.rpartition('.')[2]}/{args.dataset}"
    return args


def dataset_kind(args: argparse.Namespace) -> type[MNIST] | type[FashionMNIST]:
    """The dataset class `args.dataset` names; its `name` is the title to print."""
    return MNIST if args.dataset == "mnist" else FashionMNIST


def load_data(
    args: argparse.Namespace, min_train: int = 1, flatten: bool = False
) -> tuple[Data, Data, str]:
    """Standardized images of `args.dataset`, (N, 1, 28, 28) or (N, 784) with `flatten`, and
    labels: the first `args.train_limit` training images (None: the first `TRAIN_IMAGES`, so
    that MNIST and Fashion-MNIST train on as many as mnist-lite holds) and `args.test_limit`
    test images (None: all), from `args.data_dir` (no download with `args.offline`), and a
    one-line description of what was used. Fewer than `min_train` training images raise
    ValueError."""
    kind = dataset_kind(args)
    train_set = kind(root=args.data_dir, train=True, download=not args.offline)
    test_set = kind(root=args.data_dir, train=False, download=not args.offline)
    x_train, x_test = train_set.normalized(), test_set.normalized()
    if flatten:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    limit = TRAIN_IMAGES if args.train_limit is None else args.train_limit
    train = x_train[:limit], train_set.labels[:limit]
    test = x_test[: args.test_limit], test_set.labels[: args.test_limit]
    if len(train[1]) < min_train:
        raise ValueError(f"{len(train[1])} training images are fewer than one batch of {min_train}")
    description = (
        f"{kind.name}, train {len(train[1]):,} of {len(train_set):,} images, test "
        f"{len(test[1]):,} of {len(test_set):,} ({train_set.source.kind})"
    )
    return train, test, description


def evaluate(
    model: nn.Module, data: Data, device: str = "cpu", batch_size: int = 500, group=None
) -> float:
    """Accuracy on `data` in eval mode (so normalization uses its inference statistics), under
    no_grad, in batches of `batch_size`; the model is left in training mode. With a process
    group (`tinynorm.distributed`), each rank takes every p-th example and the counts are
    summed over the ranks."""
    model.eval()
    rank, size = (0, 1) if group is None else (group.rank, group.size)
    share = (data[0][rank::size], data[1][rank::size])
    correct = 0
    with tn.no_grad():
        for x, y in DataLoader(share, batch_size=batch_size):
            check_interrupt()
            pred = model(x.to(device)).argmax(dim=1).numpy()
            correct += int((pred == y.numpy()).sum())
    model.train()
    if group is not None:
        correct = int(group.all_reduce(np.array([correct]))[0])
    return correct / len(data[1])


def endless(loader: Iterable) -> Iterator:
    """The loader's batches, epoch after epoch (each epoch reshuffled by the loader), forever."""
    while True:
        yield from loader


def markdown_table(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    """`rows` as CSV, the first row's keys as the header."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(
    out: Path, name: str, rows: list[dict], markdown: str, plot: Callable[[Path], bool]
) -> None:
    """Write out/name.csv, out/name.md and, if `plot` can (it returns False without
    matplotlib), out/name.png; print the Markdown and what was written."""
    csv_path, md_path, png_path = (out / f"{name}.{ext}" for ext in ("csv", "md", "png"))
    write_csv(csv_path, rows)
    with atomic_write(md_path, "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)
    if plot(png_path):
        print(f"wrote {csv_path}, {md_path}, {png_path}")
    else:
        print(f"wrote {csv_path}, {md_path}")
        print(NO_MATPLOTLIB)


def train_step(
    model: nn.Module, optimizer: tn.optim.Optimizer, x: tn.Tensor, y: tn.Tensor
) -> float:
    """One update on the batch (x, y) by cross-entropy; returns the batch's loss."""
    check_interrupt()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_steps(
    model: nn.Module, optimizer: tn.optim.Optimizer, loader: DataLoader, steps: int, bar
) -> tuple[list[float], float]:
    """Up to `steps` updates on the loader's batches (its epochs repeating), stopping after the
    first non-finite loss; the losses and the seconds they took. `bar` (tqdm) advances by the
    images of every step, those a stopped run skips included."""
    batches = endless(loader)
    losses: list[float] = []
    began = time.perf_counter()
    while len(losses) < steps and (not losses or math.isfinite(losses[-1])):
        x, y = next(batches)
        losses.append(train_step(model, optimizer, x, y))
        bar.update(len(y))
    seconds = time.perf_counter() - began
    if losses:
        bar.update((steps - len(losses)) * len(y))
    return losses, seconds


def final_loss(losses: list[float]) -> float:
    """The mean training loss over the last tenth of the steps (NaN if one was not finite)."""
    return float(np.mean(losses[-max(1, len(losses) // 10) :]))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stops there."""


def check_finite_loss(loss: float, where: str, lr: float) -> float:
    """`loss`, or NonFiniteLossError naming `where` ("step 37", ...) and suggesting a lower lr."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss is {loss} at {where}: training stopped there; "
            f"try a lower --lr (this run used {lr:g})"
        )
    return loss


def was_interrupted(err: BaseException | None) -> bool:
    """True for Ctrl-C, also where it surfaced as another exception: a SIGINT that lands inside
    a Numba kernel comes out as "SystemError: CPUDispatcher(...) returned a result with an
    exception set", caused by the KeyboardInterrupt."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


_ctrl_c = types.SimpleNamespace(pressed=False)  # set by SIGINT while `catching_ctrl_c` is on
DEFER_IN = ("numba", "llvmlite")  # an exception raised mid-way corrupts their state (a crash)


def _on_sigint(signum, frame) -> None:
    """Raise KeyboardInterrupt where the signal landed, unless that is inside Numba's compiler
    or llvmlite: an exception there left llvmlite objects half-made, and the process crashed
    (double free) on exit. There it is only remembered, for the next `check_interrupt`."""
    _ctrl_c.pressed = True
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] in DEFER_IN:
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _on_unraisable(report) -> None:
    """sys.unraisablehook: stay silent about a KeyboardInterrupt that Python could not raise."""
    if not issubclass(report.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(report)


@contextlib.contextmanager
def catching_ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt where it is safe, and is always remembered: inside
    Numba's compiler it waits for `check_interrupt()` at the next step, and in a callback from
    C, where Python would print it as "unraisable" and drop it, it is raised from there too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _ctrl_c.pressed = False
    previous = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
    sys.unraisablehook = _on_unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        sys.unraisablehook = previous[1]


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and has not been raised yet."""
    if _ctrl_c.pressed:
        raise KeyboardInterrupt


ERRORS = (IDXError, OSError, ValueError, KeyError, RuntimeError)  # one line `error: ...`


def run_distributed(argv, parse_args: Callable, run: Callable, summary: Callable, **kw) -> int:
    """`run_experiment` on every rank of mpiexec (`tinynorm.distributed`, over NCCL where the
    options say `--device cuda`, else MPI): rank 0 alone prints
    (the others only their errors, on stderr), and an error on any rank aborts them all, which
    might otherwise wait for it in a collective."""
    import tinynorm.distributed as dist

    on_gpu = getattr(parse_args(argv), "device", "cpu") == "cuda"
    try:
        dist.init_process_group("nccl" if on_gpu else "mpi")
    except RuntimeError as err:  # no mpi4py or no MPI library
        print(f"error: {err}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as quiet:
        if dist.get_rank():
            devnull = quiet.enter_context(open(os.devnull, "w"))
            quiet.enter_context(contextlib.redirect_stdout(devnull))
        code = run_experiment(argv, parse_args, run, summary, **kw)
    if code:
        dist.group().comm.Abort(code)
    return code


def run_experiment(
    argv,
    parse_args: Callable,
    run: Callable,
    summary: Callable,
    interrupted: Callable[[argparse.Namespace], str] = lambda args: "interrupted",
) -> int:
    """A program's `main`: parse `argv`, `run(args)`, and print `summary(args, result)` as the
    last line (exit 0); bad data, files or values print one line `error: ...` (exit 1); Ctrl-C,
    wherever it lands, prints `interrupted(args)` (exit 130), never a traceback."""
    args = parse_args(argv)
    try:
        with catching_ctrl_c():
            result = run(args)
    except BaseException as err:
        if was_interrupted(err):
            print(interrupted(args), file=sys.stderr)
            return 130
        if isinstance(err, KeyError) and err.args:
            err = err.args[0]
        elif not isinstance(err, ERRORS):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(args, result))
    return 0


def run_verdicts(argv, parse_args: Callable, run: Callable, comparisons: Callable) -> int:
    """`run_experiment` for a program whose last line is its verdicts in one line:
    `verdicts_line(comparisons(args, rows))` of the rows `run` returns."""
    return run_experiment(
        argv, parse_args, run, lambda args, rows: verdicts_line(comparisons(args, rows))
    )


# Thirteen lines that stay apart by colour, marker and dash: one per norm setting.
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#6b8e23", "#ff1493",
)  # fmt: skip
MARKERS = "osv^DPX*h<>pd"


def line_style(i: int) -> dict:
    """The i-th line's colour, marker and dash (solid and dashed alternate)."""
    return dict(color=COLOURS[i % 13], marker=MARKERS[i % 13], linestyle="-:"[i % 2])


def plot_mean_std(ax, x: Sequence[float], runs: Sequence[Sequence[float]], i: int, label: str):
    """On `ax`, the mean over seeds at each x (`runs[j]`: the seeds' values at x[j]) with
    ± one standard deviation as error bars, in the i-th line style."""
    means = [float(np.mean(r)) for r in runs]
    errors = [sample_std(r) for r in runs]
    ax.errorbar(x, means, yerr=errors, capsize=3, label=label, markersize=5, **line_style(i))


def plot_band(ax, x: Sequence[float], curves: np.ndarray, i: int, label: str) -> None:
    """On `ax`, the mean of `curves` (seeds × len(x)) as a line in the i-th style, markers
    every tenth point, and a band of ± one standard deviation."""
    mean = curves.mean(axis=0)
    std = curves.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
    style = line_style(i)
    ax.plot(x, mean, label=label, markevery=max(1, len(x) // 10), markersize=5, **style)
    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)
