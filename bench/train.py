"""Training and inference speed of two CNNs on the CPU: tinynorm against PyTorch, each framework
in its own processes, and where tinynorm's training step spends its time.

    python bench/train.py [--rounds 3] [--steps 20] [--threads 2] [--models main,cnn]
                          [--norms bn,gn] [--torch-python PATH] [--no-torch] [--quick]
                          [--json PATH]

Models (float32, 1×28×28 inputs, 10 classes; the same layers and indices in both frameworks):
- `main`: the main job's CNN (`build_model` of `python -m tinynorm.examples.mnist`): conv 5×5
  1→16, norm, ReLU, max-pool 2, conv 5×5 16→32, norm, ReLU, max-pool 2, linear 1568→10;
  its norms: BatchNorm2d (`bn`) or the main job's GroupNorm(4) (`gn`);
- `cnn`: conv 3×3 1→32, norm, ReLU, max-pool 2, conv 3×3 32→64, norm, ReLU, max-pool 2,
  linear 3136→128, norm, ReLU, linear 128→10; norms BatchNorm2d/BatchNorm1d (`bn`) or
  GroupNorm(8) (`gn`).

Rows, for each model and norm:
- `train`: one step as the main job trains: forward, cross-entropy, zero_grad, backward and
  SGD (Nesterov momentum 0.9, lr 0.02, weight decay 5e-4), batch 128, on a fixed random batch;
- `infer`: the eval-mode forward of a batch of 1000 without a graph; in the BN models each
  conv or linear layer and the batch norm after it are fused first (tinynorm's `fuse_conv_bn`
  and `fuse_linear_bn`, PyTorch's `fuse_conv_bn_eval` and `fuse_linear_bn_eval`).

Each measurement is a fresh process that imports NumPy first and then its framework (what a
user's script does), times 3 warm-up and then `--steps` steps and reports their median; the
two frameworks alternate, `--rounds` processes each, and a row gives the median over processes,
their range and tinynorm's ratio to PyTorch. Both start from the same weights (tinynorm's
initialization, saved to an .npz), so the first training losses agree. PyTorch runs in
`--torch-python` (default: this interpreter), as it is only ever a point of comparison.
A last tinynorm process per model and norm splits the training step by category
(`step_profile.breakdown`, from `tinynorm.profiler.profile()`: ops, kernels and ranges).

Run it alone on the machine, with the host's OpenBLAS overrides unset as a user's machine has
none: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/train.py ...`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import common

MODELS = ("main", "cnn")
NORMS = ("bn", "gn")
MODES = ("train", "infer")
TRAIN_BATCH, INFER_BATCH = 128, 1000
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 5e-4  # the main job's SGD
WARMUP = 3

FLATTEN, RELU = ("Flatten", (), {}), ("ReLU", (), {})


def conv_block(cin: int, cout: int, k: int) -> list:
    """conv k×k (padding k // 2) → norm → ReLU → max-pool 2, as (layer, arguments, keywords)."""
    return [
        ("Conv2d", (cin, cout, k), {"padding": k // 2}),
        ("norm", (cout,), {}),
        RELU,
        ("MaxPool2d", (2,), {}),
    ]


# (layer, arguments, keywords) in order; "norm" becomes the model's norm for that many channels
LAYERS = {
    "main": [
        *conv_block(1, 16, 5),
        *conv_block(16, 32, 5),
        FLATTEN,
        ("Linear", (32 * 7 * 7, 10), {}),
    ],
    "cnn": [
        *conv_block(1, 32, 3),
        *conv_block(32, 64, 3),
        FLATTEN,
        ("Linear", (64 * 7 * 7, 128), {}),
        ("norm1d", (128,), {}),
        RELU,
        ("Linear", (128, 10), {}),
    ],
}
GROUPS = {"main": 4, "cnn": 8}  # GroupNorm's groups: the main job's 4; the CNN's 8


def build(nn: Any, model: str, norm: str) -> Any:
    """`model` with `norm` from the module namespace `nn` (tinynorm.nn or torch.nn)."""
    layers = []
    for name, args, kwargs in LAYERS[model]:
        if name.startswith("norm"):
            if norm == "gn":
                layers.append(nn.GroupNorm(GROUPS[model], *args))
            else:
                layers.append((nn.BatchNorm1d if name == "norm1d" else nn.BatchNorm2d)(*args))
        else:
            layers.append(getattr(nn, name)(*args, **kwargs))
    return nn.Sequential(*layers)


def fused(nn: Any, layers: list, fuse_conv: Any, fuse_linear: Any) -> Any:
    """The eval-mode `layers` with each conv/linear + batch norm pair folded into one layer."""
    out: list = []
    for layer in layers:
        kind = type(layer).__name__
        if kind.startswith("BatchNorm") and type(out[-1]).__name__ in ("Conv2d", "Linear"):
            fuse = fuse_conv if type(out[-1]).__name__ == "Conv2d" else fuse_linear
            out[-1] = fuse(out[-1], layer)
        else:
            out.append(layer)
    return nn.Sequential(*out).eval()


def child(spec: dict) -> dict:
    """One measurement in this process: NumPy first, then the framework (see the module doc)."""
    import numpy as np

    weights = dict(np.load(spec["weights"]))  # plain arrays, no pickle
    rng = np.random.default_rng(0)
    batch = TRAIN_BATCH if spec["mode"] == "train" else INFER_BATCH
    batch = spec.get("batch") or batch
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    run = child_torch if spec["framework"] == "torch" else child_tinynorm
    return run(spec, weights, x, y)


def child_tinynorm(spec: dict, weights: dict, x: Any, y: Any) -> dict:
    from step_profile import breakdown, train_step

    import tinynorm as tn
    import tinynorm.nn.functional as F
    from tinynorm import nn
    from tinynorm.nn.utils import fuse_conv_bn, fuse_linear_bn

    tn.set_num_threads(spec["threads"])
    model = build(nn, spec["model"], spec["norm"])
    for name, p in model.named_parameters():
        p.data[...] = weights[name]
    if spec["mode"] == "infer":
        model.eval()
        if spec["norm"] == "bn":
            model = fused(nn, list(model), fuse_conv_bn, fuse_linear_bn)
        xt = tn.tensor(x)

        def forward() -> None:
            with tn.no_grad():
                model(xt)

        return {"ms": 1e3 * common.median_time(forward, spec["steps"], WARMUP)}
    opt = tn.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    xt, yt = tn.tensor(x), tn.tensor(y)

    def loss_of_batch() -> tn.Tensor:
        return F.cross_entropy(model(xt), yt)

    def step() -> float:  # zero_grad, backward, step: the same as the breakdown's
        return train_step(loss_of_batch, opt)

    first_loss = step()
    result = {"ms": 1e3 * common.median_time(step, spec["steps"], WARMUP), "first_loss": first_loss}
    if spec.get("profile"):
        result["breakdown"] = breakdown(loss_of_batch, model, opt, spec["steps"])
    return result


def child_torch(spec: dict, weights: dict, x: Any, y: Any) -> dict:
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    torch.set_num_threads(spec["threads"])
    model = build(nn, spec["model"], spec["norm"])
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=False)
    if spec["mode"] == "infer":
        model.eval()
        if spec["norm"] == "bn":
            model = fused(nn, list(model), fuse_conv_bn_eval, fuse_linear_bn_eval)
        xt = torch.from_numpy(x)

        def forward() -> None:
            with torch.no_grad():
                model(xt)

        return {"ms": 1e3 * common.median_time(forward, spec["steps"], WARMUP)}
    opt = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> float:
        loss = nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    first_loss = step()
    return {
        "ms": 1e3 * common.median_time(step, spec["steps"], WARMUP),
        "first_loss": first_loss,
        "torch": torch.__version__,
    }


def initial_weights(model: str, norm: str, path: Path) -> None:
    """tinynorm's initial parameters of `model` (seed 0), saved as a plain .npz."""
    import numpy as np

    import tinynorm as tn
    from tinynorm import nn

    tn.manual_seed(0)
    net = build(nn, model, norm)
    np.savez(path, **{name: p.numpy() for name, p in net.named_parameters()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="processes per framework (median)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per process (median)")
    p.add_argument("--threads", type=int, default=2, help="threads for each framework")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: main, cnn")
    p.add_argument("--norms", default=",".join(NORMS), help="comma-separated: bn, gn")
    p.add_argument("--torch-python", default=sys.executable, help="the Python that has torch")
    p.add_argument("--no-torch", action="store_true", help="tinynorm only")
    p.add_argument("--no-profile", action="store_true", help="skip the step breakdowns")
    p.add_argument("--quick", action="store_true", help="1 round, 2 steps, batch 8 (smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, allowed in (("models", MODELS), ("norms", NORMS)):
        chosen = getattr(args, name).split(",")
        if not chosen or set(chosen) - set(allowed):
            p.error(f"--{name} takes a comma-separated subset of {', '.join(allowed)}")
        setattr(args, name, chosen)
    if args.quick:
        args.rounds, args.steps = 1, 2
    return args


def measure(args: argparse.Namespace, folder: Path) -> tuple[list[dict], list[dict]]:
    """(rows, breakdowns): the alternated processes of every model, norm and mode."""
    rows, breakdowns = [], []
    frameworks = ["tinynorm"] + ([] if args.no_torch else ["torch"])
    for model in args.models:
        for norm in args.norms:
            weights = folder / f"{model}-{norm}.npz"
            initial_weights(model, norm, weights)
            for mode in MODES:
                spec = {"model": model, "norm": norm, "mode": mode, "weights": str(weights)}
                spec |= {"steps": args.steps, "threads": args.threads}
                if args.quick:
                    spec["batch"] = 8
                results: dict[str, list[dict]] = {f: [] for f in frameworks}
                for _ in range(args.rounds):
                    for framework in frameworks:
                        python = args.torch_python if framework == "torch" else sys.executable
                        spec["framework"] = framework
                        result = common.run_in_process(python, __file__, spec)
                        if result is not None:
                            results[framework].append(result)
                rows.append(summarize(spec, results))
                print(common.markdown_table(HEADER, [row_cells(rows[-1])], left=3).splitlines()[-1])
            if not args.no_profile:
                spec = {"model": model, "norm": norm, "mode": "train", "weights": str(weights)}
                spec |= {"steps": args.steps, "threads": args.threads, "profile": True}
                spec |= {"framework": "tinynorm"} | ({"batch": 8} if args.quick else {})
                parts = common.run_in_process(sys.executable, __file__, spec)["breakdown"]
                breakdowns.append({"model": model, "norm": norm, "parts": parts})
    return rows, breakdowns


def summarize(spec: dict, results: dict[str, list[dict]]) -> dict:
    """One row: per framework the median over processes, the range and the first loss."""
    row = {k: spec[k] for k in ("model", "norm", "mode")}
    batch = spec.get("batch") or (TRAIN_BATCH if spec["mode"] == "train" else INFER_BATCH)
    for framework, runs in results.items():
        if not runs:
            continue
        ms = [r["ms"] for r in runs]
        row[framework] = {
            "ms": statistics.median(ms),
            "range": [min(ms), max(ms)],
            "images_per_s": 1e3 * batch / statistics.median(ms),
            "first_loss": runs[0].get("first_loss"),
            "processes": len(ms),
        }
        if runs[0].get("torch"):
            row["torch_version"] = runs[0]["torch"]
    if "tinynorm" in row and "torch" in row:
        row["ratio_to_torch"] = row["tinynorm"]["ms"] / row["torch"]["ms"]
    return row


HEADER = [
    "model",
    "norm",
    "pass",
    "tinynorm ms",
    "range",
    "images/s",
    "torch ms",
    "range",
    "images/s",
    "× torch",
    "first loss (tn / torch)",
]


def row_cells(row: dict) -> list[str]:
    cells = [row["model"], row["norm"], row["mode"]]
    for framework in ("tinynorm", "torch"):
        r = row.get(framework)
        if r is None:
            cells += ["—", "—", "—"]
        else:
            low, high = r["range"]
            cells += [
                common.cell(r["ms"]),
                f"{low:.1f}-{high:.1f}",
                common.cell(r["images_per_s"], ".0f"),
            ]
    cells.append(common.cell(row.get("ratio_to_torch")))
    losses = [row.get(f, {}).get("first_loss") for f in ("tinynorm", "torch")]
    cells.append(" / ".join(f"{v:.4f}" for v in losses if v is not None) or "—")
    return cells


def breakdown_table(entry: dict) -> str:
    parts = entry["parts"]
    total = sum(p["ms"] for p in parts)
    table = common.markdown_table(
        ["category", "timed calls", "ms", "% of step"],
        [
            [
                p["category"],
                ", ".join(p["timed"]),
                common.cell(p["ms"]),
                common.cell(p["percent"], ".1f"),
            ]
            for p in parts
        ]
        + [["step (profiled)", "", common.cell(total), "100.0"]],
        left=2,
    )
    title = f"One tinynorm training step of `{entry['model']}` with `{entry['norm']}`, by category"
    return f"\n{title}\n\n{table}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return common.child_main(args, child)
    import numba  # noqa: F401  (only so that `machine` reports the versions in use)
    import numpy  # noqa: F401

    info = common.machine(args.threads)
    print(common.describe(info))
    runs = f"median of {args.rounds} processes per framework, each the median of {args.steps} steps"
    print(f"\n{runs}\n")
    print(common.markdown_table(HEADER, [], left=3))
    with tempfile.TemporaryDirectory() as folder:
        rows, breakdowns = measure(args, Path(folder))
    info["torch"] = next((r["torch_version"] for r in rows if "torch_version" in r), None)
    if info["torch"]:
        print(f"\nPyTorch {info['torch']} ({args.torch_python})")
    for entry in breakdowns:
        print(breakdown_table(entry))
    if args.json:
        common.write_json(
            args.json,
            info,
            rows,
            breakdowns=breakdowns,
            rounds=args.rounds,
            steps=args.steps,
            quick=args.quick,
            torch_python=None if args.no_torch else args.torch_python,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
