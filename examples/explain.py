"""One training step of the main job, seen from inside: its graph, its profile, its kernels.

    python -m tinynorm.examples.explain [--norm bn] [--quick] [--out results/explain]

Builds the main job's model (`examples.mnist.build_model`: conv → norm → ReLU → pool, twice,
then a classifier) and trains it on real batches (the bundled mnist-lite digits unless told
otherwise): --warmup steps (3; 1 with --quick) compile or load the kernels and let the memory
allocator settle (a fresh array's first touch costs page faults: in the second step ReLU's
kernel still ran at a fifth of its later speed), then one step inside
`tinynorm.profiler.profile()`. It writes into --out, printing where each file is:

    graph.dot / graph.svg  the profiled step's autograd graph (`tinynorm.viz.draw_graph`),
                           parameters named, values and gradients summarized (the values as
                           the step's update left them); the SVG needs a `dot` program
                           (pip install -e ".[viz]")
    profile.txt            the profiler's table: each op's forward and backward, the kernels
                           each launched, their bytes and GB/s against this machine's copy
    trace.json             the same events as a Chrome trace (ui.perfetto.dev, chrome://tracing)
    kernels.txt            what Numba compiled for the norm layers' kernels
                           (`tinynorm.kernels.inspect`), with their share of the profile

docs/TOUR.md follows this step through the code, file by file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import kernels, nn, profiler, viz
from tinynorm.files import atomic_write

from .common import DATASETS, add_data_options, load_data, positive_int
from .mnist import NORM_HELP, NORMS, build_model

NORM_MODULES = (
    "tinynorm.ops.normalize",
    "tinynorm.ops.normalize_mixed",
    "tinynorm.ops.weight_norm",
)
QUICK = {"width": 4, "batch_size": 16, "warmup": 1}
FULL = {"width": 16, "batch_size": 64, "warmup": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tinynorm.examples.explain",
        description="Profile and draw one training step of the main job's model.",
    )
    p.add_argument("--norm", choices=NORMS, default="bn", help=NORM_HELP + " (default: bn)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a narrower model on a smaller batch ({QUICK['width']} channels, batch "
        f"{QUICK['batch_size']}, {QUICK['warmup']} warm-up step; explicit options still win)",
    )
    p.add_argument(
        "--warmup",
        type=positive_int,
        help=f"steps before the profiled one (default {FULL['warmup']})",
    )
    p.add_argument(
        "--width", type=int, help=f"channels of the first conv (default {FULL['width']})"
    )
    p.add_argument("--batch-size", type=positive_int, help=f"default {FULL['batch_size']}")
    p.add_argument("--out", default="results/explain", help="output directory")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="default: mnist")
    p.add_argument("--data-dir", help="directory holding the four IDX files")
    add_data_options(p)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def training_step(
    model: nn.Module, optimizer: tn.optim.Optimizer, x, y, retain_graph: bool = False
) -> tn.Tensor:
    """The main job's step (cross-entropy, zero_grad, backward, step); the loss, its graph kept
    with `retain_graph` (to draw it). The optimizer's two calls are profiler ranges."""
    loss = F.cross_entropy(model(x), y)
    with profiler.record_function("optimizer.zero_grad"):
        optimizer.zero_grad()
    loss.backward(retain_graph=retain_graph)
    with profiler.record_function("optimizer.step"):
        optimizer.step()
    return loss


def kernel_report(loss: tn.Tensor, prof: profiler.Profiler, launches: dict) -> str:
    """What Numba compiled for each kernel the norm ops launched (every kernel when the model
    has none), each with its calls, time and bandwidth in the profiled step."""
    nodes, _ = viz.graph_nodes(loss)
    norm_ops = {type(t._fn).__name__ for t in nodes if type(t._fn).__module__ in NORM_MODULES}
    rows = [r for r in prof.rows() if r["op"] in norm_ops] or prof.rows()
    copy = prof.copy_bandwidth / 1e9
    parts = [
        f"kernels of the ops {sorted({r['op'] for r in rows})}; copy bandwidth {copy:.2f} GB/s",
    ]
    for r in rows:
        for k in r["kernels"]:
            try:
                text = str(kernels.report(k["kernel"], launches[k["kernel"]]))
            except TypeError as err:  # max pooling's kernels are compiled per window geometry
                text = f"{k['kernel']}: {err}"
            parts.append(
                f"{text}\n  in the profiled step, under {r['op']} {r['pass']}: {k['calls']} "
                f"calls, {1e3 * k['seconds']:.3f} ms, {k['bytes'] / 1e6:.3f} MB moved, "
                f"{k['gbps']:.2f} GB/s ({100 * k['gbps'] / copy:.0f}% of copy)"
            )
    return "\n\n".join(parts) + "\n"


def run(args: argparse.Namespace) -> dict[str, Path]:
    """The steps and the files; returns {what: path} for each file written."""
    steps, size = args.warmup + 1, args.batch_size
    args.train_limit, args.test_limit = steps * size, 1
    (x_all, y_all), _, description = load_data(args, min_train=steps * size)
    batches = [
        (tn.tensor(x_all[i : i + size]), tn.tensor(y_all[i : i + size]))
        for i in range(0, steps * size, size)
    ]
    tn.manual_seed(0)
    model = build_model(args.norm, total_steps=steps, width=args.width)
    optimizer = tn.optim.SGD(
        model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    # each kernel's first arguments, for `report`; the graphs freed, so later steps reuse memory
    with kernels.first_launches() as launches:
        losses = [training_step(model, optimizer, *batch).item() for batch in batches[:-1]]
    with profiler.profile() as prof:
        loss = training_step(model, optimizer, *batches[-1], retain_graph=True)
    print(f"{description}; model {args.norm}, width {args.width}, batch {size}")
    shown = ", ".join(f"{v:.4f}" for v in [*losses, loss.item()])
    print(f"losses: {shown} (the last step profiled)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"graph (DOT)": out / "graph.dot"}
    viz.draw_graph(loss, written["graph (DOT)"], module=model, show_values=True)
    if viz.dot_program():
        written["graph (SVG)"] = out / "graph.svg"
        viz.draw_graph(loss, written["graph (SVG)"], module=model, show_values=True)
    else:
        print('no dot program: pip install -e ".[viz]" for graph.svg; graph.dot written')
    written["profile"] = out / "profile.txt"
    with atomic_write(written["profile"]) as f:
        f.write((prof.table() + "\n").encode())
    written["trace"] = out / "trace.json"
    prof.export_chrome_trace(written["trace"])
    written["kernels"] = out / "kernels.txt"
    text = kernel_report(loss, prof, launches)
    with atomic_write(written["kernels"]) as f:
        f.write(text.encode())
    print(prof.table())
    for what, path in written.items():
        print(f"{what:>12}: {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
