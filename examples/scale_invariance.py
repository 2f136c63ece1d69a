"""Batch norm's scale invariance (seed 002), checked along a training run.

    python -m tinynorm.examples.scale_invariance [--quick] [--seeds 0 1 2] [--scales 0.1 10]
        [--dataset mnist|fashion-mnist] [--out DIR]

The claim (seed 002, after Ioffe & Szegedy 2015, §3.3): a batch-normalized layer does not see
the scale of its weights. For a scalar a > 0, BN((aW)u) = BN(Wu), so the output, the loss and
the gradient that passes on through the layer do not change, and ∂ℓ/∂(aW) = (1/a)·∂ℓ/∂W:
larger weights get smaller gradients. Its consequence for SGD at learning rate η: a step on aW,
aW − η·(1/a)·∂ℓ/∂W = a·(W − (η/a²)·∂ℓ/∂W), is a step on W at η/a², the effective learning
rate of a weight of scale a.

What runs. For each seed, the main job's CNN (`examples/mnist.py`, `build_model`: conv 5×5 →
norm → ReLU → max-pool, twice, then linear) with BatchNorm2d ("BN") and the same network
without normalization ("no BN") start from the same weights and train in lockstep on the same
batches of `--batch-size` (SGD, momentum 0.9, `--lr`) for `--steps`. At step 0, every
`--check-every` steps and at the end, each is tested (eval mode) and checked on a fixed batch,
the first `--batch-size` training images, in training mode (BN with the batch's statistics;
the running averages were gathered unscaled, so eval mode is not invariant). A check works on
copies, and training goes on untouched. For each a of `--scales` and each choice of weights to
scale (conv1, conv2, both; each conv feeds a norm), a copy with those weights × a is compared
with the unscaled copy (each norm ‖·‖ over all the values named):

- the logits z (batch × 10): ‖z' − z‖ / ‖z‖; the loss: |ℓ' − ℓ| / ℓ;
- the gradient g of the scaled weights (together): the ratio ‖g'‖·a / ‖g‖, 1 where
  ∂ℓ/∂(aW) = ∂ℓ/∂W / a, and the error ‖a·g' − g‖ / ‖g‖, 0 where that holds elementwise;
- the gradient h of every other parameter (together, conv biases included: BN subtracts them,
  so theirs are 0 up to rounding): ‖h' − h‖ / ‖h‖;
- for "BN, ε·a²" (below), the effective learning rate: one plain SGD step p ← p − η·∂ℓ/∂p
  (η = `--probe-lr`, 0.5, so that a step shows far above rounding) of the scaled copy, against
  one of the unscaled copy at η/a² on the scaled weights and η on the rest, ‖z'₁ − z₁‖ / ‖z₁‖
  of the logits after the steps; and against η everywhere, the step without the correction.

ε. A real batch norm computes (x − μ)/sqrt(σ² + ε) (ε = 1e-5), and BN_ε((aW)u) = BN_{ε/a²}(Wu):
the invariance is exact only with ε scaled along with the variance it is added to. So BN is
checked twice: "BN, ε·a²", the scaled copy's norms after the scaled weights with ε·a², where
the identity holds exactly in real arithmetic and float32 rounding alone remains; and "BN, ε
fixed", as trained, where ε's share shows too: about ε·|1/a² − 1| / (2σ²) relative, σ² a
channel's variance, so largest for small a and quiet channels (measured up to 3e-3 on the
logits and 3e-2 on a gradient at a = 0.1).

Two claims, each judged over every check of every seed: "reproduced" where the largest
deviation of "BN, ε·a²" (of every measure above that should be 0, and |ratio − 1|) stays below
TOLERANCE = 1e-4 (float32 rounds to 6e-8; the sums of a conv and a norm leave about 1e-6) and
the smallest contrast reaches CONTRAST = 1e-3; "not reproduced" where a deviation reaches
TOLERANCE; "inconclusive" where the contrast stays below CONTRAST, too small to tell:
- "scaling a conv weight by a leaves BN's output and other gradients unchanged and divides its
  gradient by a": the contrast is no BN's logits change;
- "a step at η on aW is a step at η/a² on W": the contrast is the step at η everywhere.
These are identities checked to a tolerance, not differences of means, so `verdicts.py`'s rule
and its five seeds do not apply; the mean ± std over the seeds describe the gradient ratio.

Outputs, in `--out` (written atomically): `scale_invariance.csv` (one row per seed, step,
network, weights scaled and a: the network's test accuracy at that step and the measures
above, the step's blank but for "BN, ε·a²"), `scale_invariance.md` (the settings, a table per
network and a, the final test accuracy, the verdicts) and `scale_invariance.png` (the gradient
ratio × a and the logits change against a, log axes, the mean over the seeds with ± std error
bars, if matplotlib is installed). The last line printed is `BN, ε·a²: largest deviation …,
gradient ratio × a …; BN, ε fixed: largest logits change …; no BN: smallest …; scale
invariance: <verdict>, effective lr η/a²: <verdict>`.

Cost, measured on 2 CPU cores shared with other jobs, about 5 times slower than idle
(2026-11-28): a lockstep step of the two networks at width 16 takes 0.23 s, a check of both
(4 scales × 3 choices: 36 forward and backward passes, 24 forward) 5.3 s, a test of both on
10,000 images 7.6 s. So `--quick` (2 seeds, 40 steps, width 8, checks at 0, 20 and 40, 500 test
images) takes about 33 s there, 10 s idle, and the full run (3 seeds, 200 steps, width 16, checks
at 0, 100 and 200, the full test set) about 4 minutes there, 1 minute idle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.data import DataLoader
from tinynorm.files import atomic_write

from .common import (
    check_finite_loss,
    endless,
    evaluate,
    experiment_parser,
    load_data,
    markdown_table,
    parse_experiment,
    plot_mean_std,
    run_experiment,
    train_step,
    write_outputs,
)
from .mnist import build_model
from .verdicts import mean_std

NETWORKS = {"bn": "BN, ε·a²", "bn_eps": "BN, ε fixed", "none": "no BN"}
CHOICES = {"conv1": (0,), "conv2": (1,), "both": (0, 1)}  # which convs (in order) are scaled
SHOULD_BE_ZERO = ("logits_change", "loss_change", "grad_error", "other_grad_change")
TOLERANCE = 1e-4  # a deviation of "BN, ε·a²" below this is float32 rounding
CONTRAST = 1e-3  # a contrast below this could not tell an invariance from its absence
QUICK = dict(steps=40, check_every=20, width=8, seeds=[0, 1], train_limit=2_000, test_limit=500)
FULL = dict(steps=200, check_every=100, width=16)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = experiment_parser(
        "scale_invariance",
        "Batch norm's scale invariance, BN((aW)u) = BN(Wu) and ∂ℓ/∂(aW) = ∂ℓ/∂W / a, checked "
        "on the main job's CNN along a training run, against the same CNN without BN.",
        "a short run: 2 seeds, 40 steps, width 8, 2,000 training and 500 test images",
    )
    p.add_argument("--steps", type=int, help="training steps (default: 200)")
    p.add_argument("--check-every", type=int, help="steps between checks (default: 100)")
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 2.0, 10.0],
        metavar="A",
        help="the factors a of the scaled weights (default: 0.1 0.5 2 10)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (default: 0.02)")
    p.add_argument(
        "--probe-lr",
        type=float,
        default=0.5,
        metavar="ETA",
        help="the plain SGD step of the effective-learning-rate check (default: 0.5)",
    )
    p.add_argument("--width", type=int, help="channels of the first conv (default: 16)")
    args = parse_experiment(p, argv, QUICK, FULL)
    if min(args.steps, args.check_every, args.width) < 1 or not min(args.lr, args.probe_lr) > 0:
        p.error("--steps, --check-every and --width must be >= 1, --lr and --probe-lr > 0")
    if args.batch_size < 2:
        p.error("--batch-size must be >= 2 (batch norm needs two examples)")
    if not all(0 < a < float("inf") and a != 1 for a in args.scales):
        p.error("--scales must be positive and finite, and not 1")
    return args


def convs(model: nn.Sequential) -> list[int]:
    """The positions of the model's convolutions; each is followed by its norm."""
    return [i for i, layer in enumerate(model) if isinstance(layer, nn.Conv2d)]


def relative(new: np.ndarray, old: np.ndarray) -> float:
    """‖new − old‖ / ‖old‖, in float64."""
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    return float(np.linalg.norm(new - old) / np.linalg.norm(old))


def sig(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits (for the CSV)."""
    return float(f"{value:.{digits}g}")


def flat(grads: dict[str, np.ndarray], names) -> np.ndarray:
    return np.concatenate([grads[n].ravel() for n in names])


def gradients(model: nn.Module, x: tn.Tensor, y: tn.Tensor) -> tuple[np.ndarray, float, dict]:
    """Logits (N, 10), cross-entropy loss and every parameter's gradient by name, in training
    mode."""
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return logits.numpy().copy(), loss.item(), grads


def stepped_logits(model: nn.Module, grads: dict, lr: dict, x: tn.Tensor) -> np.ndarray:
    """The logits on x after one plain SGD step p ← p − lr[name]·grads[name] (in place)."""
    for name, p in model.named_parameters():
        p.data -= np.float32(lr[name]) * grads[name]
    with tn.no_grad():
        return model(x).numpy().copy()


def scale(model: nn.Sequential, which: tuple[int, ...], a: float, eps_too: bool) -> list[str]:
    """Multiply the convs `which` of `model` (0: conv1, 1: conv2) by a in place, and with
    `eps_too` the ε of the norms they feed by a²; the names of the scaled weights."""
    positions = [convs(model)[i] for i in which]
    for i in positions:
        model[i].weight.data *= np.float32(a)
        if eps_too:
            model[i + 1].eps *= a * a
    return [f"{i}.weight" for i in positions]


def check(args, kind: str, state: dict, x: tn.Tensor, y: tn.Tensor) -> list[dict]:
    """Compare the network `kind` of `state` with its copies of scaled conv weights (every
    choice and scale; BN with ε scaled and fixed) on the batch (x, y): one dict of measures
    each, the effective learning rate's for "BN, ε·a²" alone (blank for the others)."""

    def copy() -> nn.Sequential:
        model = build_model(kind, 0, args.width)
        model.load_state_dict(state)
        return model

    logits, loss, grads = gradients(copy(), x, y)
    every = dict.fromkeys(grads, args.probe_lr)
    plain_step = stepped_logits(copy(), grads, every, x) if kind == "bn" else None
    results = []
    for network in ("bn", "bn_eps") if kind == "bn" else ("none",):
        for choice, which in CHOICES.items():
            for a in args.scales:
                scaled = copy()
                names = scale(scaled, which, a, eps_too=network == "bn")
                logits_a, loss_a, grads_a = gradients(scaled, x, y)
                others = [n for n in grads if n not in names]
                g, g_a = flat(grads, names), flat(grads_a, names)
                result = {
                    "network": network,
                    "scaled": choice,
                    "a": a,
                    "logits_change": sig(relative(logits_a, logits)),
                    "loss_change": sig(abs(loss_a - loss) / loss),
                    "grad_ratio": sig(np.linalg.norm(g_a) * a / np.linalg.norm(g), 10),
                    "grad_error": sig(relative(a * g_a.astype(np.float64), g)),
                    "other_grad_change": sig(relative(flat(grads_a, others), flat(grads, others))),
                    "lr_change": "",
                    "lr_plain_change": "",
                }
                if network == "bn":  # one step of each, where the identity is exact
                    step_a = stepped_logits(scaled, grads_a, every, x)
                    corrected = every | {n: args.probe_lr / a**2 for n in names}
                    step = stepped_logits(copy(), grads, corrected, x)
                    result["lr_change"] = sig(relative(step_a, step))
                    result["lr_plain_change"] = sig(relative(step_a, plain_step))
                results.append(result)
    return results


def train(args: argparse.Namespace, seed: int, train_data, test_data) -> list[dict]:
    """Train BN and no BN from the weights of `seed` in lockstep, checking both at step 0,
    every `check_every` steps and the last; the CSV rows."""
    models, optimizers = {}, {}
    for kind in ("bn", "none"):
        tn.manual_seed(seed)  # the same initial weights for both
        models[kind] = build_model(kind, 0, args.width)
        optimizers[kind] = tn.optim.SGD(list(models[kind].parameters()), lr=args.lr, momentum=0.9)
    batches = endless(
        DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True, seed=seed)
    )
    x, y = (tn.tensor(a[: args.batch_size]) for a in train_data)  # the fixed check batch
    rows = []

    def checkpoint(step: int) -> None:
        for kind, model in models.items():
            accuracy = round(evaluate(model, test_data), 6)
            base = {"seed": seed, "step": step, "test_accuracy": accuracy}
            rows.extend(base | r for r in check(args, kind, model.state_dict(), x, y))

    checkpoint(0)
    for step in tqdm(range(1, args.steps + 1), desc=f"seed {seed}", unit="step"):
        x_step, y_step = next(batches)
        for kind, model in models.items():
            loss = train_step(model, optimizers[kind], x_step, y_step)
            check_finite_loss(loss, f"step {step} ({NETWORKS[kind]}, seed {seed})", args.lr)
        if step % args.check_every == 0 or step == args.steps:
            checkpoint(step)
    return rows


def select(rows: list[dict], key: str, **match) -> list[float]:
    return [r[key] for r in rows if all(r[k] == v for k, v in match.items())]


def by_seed(rows: list[dict], key: str, reduce, **match) -> list[float]:
    """`reduce` of `key` over each seed's rows that match, in seed order."""
    return [reduce(select(rows, key, seed=s, **match)) for s in seeds_of(rows)]


def seeds_of(rows: list[dict]) -> list[int]:
    return sorted({r["seed"] for r in rows})


def claims(rows: list[dict]) -> list[tuple[str, float, float, str]]:
    """Each claim, the largest deviation of "BN, ε·a²", the smallest contrast and the verdict
    (see the module's docstring)."""
    exact = [r for r in rows if r["network"] == "bn"]
    deviation = max(max(r[k] for r in exact for k in SHOULD_BE_ZERO), max_ratio_error(exact))
    found = [
        (
            "scaling a conv weight by a leaves BN's output and other gradients unchanged and "
            "divides its gradient by a",
            deviation,
            min(select(rows, "logits_change", network="none")),
        ),
        (
            "a step at η on aW is a step at η/a² on W",
            max(r["lr_change"] for r in exact),
            min(r["lr_plain_change"] for r in exact),
        ),
    ]
    return [(claim, d, c, verdict(d, c)) for claim, d, c in found]


def max_ratio_error(rows: list[dict]) -> float:
    """The largest |ratio × a − 1| of the gradient ratios of `rows`."""
    return max(abs(r["grad_ratio"] - 1) for r in rows)


def table_row(rows: list[dict], network: str, a: float) -> list[str]:
    """The Markdown row of `network` and scale a: the largest deviations, the gradient ratio,
    and (for "BN, ε·a²") the effective learning rate's deviation and contrast."""
    chosen = [r for r in rows if r["network"] == network and r["a"] == a]
    cells = [f"{max(r[k] for r in chosen):.2e}" for k in SHOULD_BE_ZERO]
    ratio = mean_std(by_seed(chosen, "grad_ratio", np.mean), 6)
    steps = ["–", "–"]
    if network == "bn":
        steps = [
            f"{max(r['lr_change'] for r in chosen):.2e}",
            f"{min(r['lr_plain_change'] for r in chosen):.2e}",
        ]
    return [NETWORKS[network], f"{a:g}", *cells, ratio, f"{max_ratio_error(chosen):.2e}", *steps]


def verdict(deviation: float, contrast: float) -> str:
    if not deviation < TOLERANCE:
        return "not reproduced"
    return "reproduced" if contrast >= CONTRAST else "inconclusive"


def summary_markdown(args: argparse.Namespace, rows: list[dict], data: str) -> str:
    """The settings, the measures per network and a, the test accuracy and the verdicts."""
    seeds = seeds_of(rows)
    table = markdown_table(
        [
            "network",
            "a",
            "logits change (max)",
            "loss change (max)",
            "gradient error (max)",
            "other gradients' change (max)",
            "gradient ratio × a (mean ± std over seeds)",
            "abs(ratio × a − 1) (max)",
            "step η vs η/a² (max)",
            "step η vs η (min)",
        ],
        [table_row(rows, key, a) for key in NETWORKS for a in args.scales],
    )
    final = max(r["step"] for r in rows)
    accuracy = {
        kind: mean_std(by_seed(rows, "test_accuracy", max, network=kind, step=final))
        for kind in ("bn", "none")
    }
    verdicts = markdown_table(
        ["claim", "largest deviation (BN, ε·a²)", "smallest contrast", "verdict"],
        [[claim, f"{d:.2e}", f"{c:.2e}", v] for claim, d, c, v in claims(rows)],
    )
    checks = sorted({r["step"] for r in rows})
    return "\n".join(
        [
            "# Batch norm's scale invariance, with tinynorm",
            "",
            f"{settings(args)}; seeds {', '.join(map(str, seeds))}. Data: {data}. Checked at "
            f"steps {', '.join(map(str, checks))} on a fixed batch of {args.batch_size} "
            f"training images, in training mode, scaling conv1, conv2 or both by a. Relative "
            "changes against the unscaled copy; the contrasts are no BN's logits change and "
            f"the step without the η/a² correction. Tolerance {TOLERANCE:g}, contrast "
            f"{CONTRAST:g}.",
            "",
            table,
            "",
            f"Test accuracy after {final:,} steps (eval mode, mean ± std over the seeds): BN "
            f"{accuracy['bn']}, no BN {accuracy['none']}.",
            "",
            verdicts,
            "",
        ]
    )


def settings(args: argparse.Namespace) -> str:
    """The experiment in one line, for the console and the Markdown."""
    return (
        f"CNN width {args.width}, with BatchNorm2d and without; batch {args.batch_size}; SGD "
        f"momentum 0.9, lr {args.lr:g}, {args.steps:,} steps; scales "
        f"{', '.join(f'{a:g}' for a in args.scales)}"
    )


def plot(args: argparse.Namespace, rows: list[dict], path: Path) -> bool:
    """Gradient ratio × a and logits change against a (log axes), one line per network, the
    mean over the seeds with ± std error bars; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    panels = ((left, "grad_ratio", np.mean), (right, "logits_change", max))
    for ax, key, reduce in panels:
        for i, (network, name) in enumerate(NETWORKS.items()):
            runs = [by_seed(rows, key, reduce, network=network, a=a) for a in args.scales]
            plot_mean_std(ax, args.scales, runs, i, name)
        ax.set(xscale="log", yscale="log", xlabel="scale a of the conv weights")
    left.set(ylabel="‖∂ℓ/∂(aW)‖ · a / ‖∂ℓ/∂W‖ (mean over checks)", title="gradient ratio × a")
    right.axhline(TOLERANCE, color="grey", linestyle="--", linewidth=1, label="tolerance")
    right.set(ylabel="‖z' − z‖ / ‖z‖ (max over checks)", title="change of the logits z")
    left.legend()
    right.legend()
    count = len(seeds_of(rows))
    fig.suptitle(f"mean ± std over {count} seed{'s' if count != 1 else ''}")
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    return True


def run(args: argparse.Namespace) -> list[dict]:
    train_data, test_data, data = load_data(args, min_train=args.batch_size)
    print(settings(args))
    rows = [row for seed in args.seeds for row in train(args, seed, train_data, test_data)]
    markdown = summary_markdown(args, rows, data)
    write_outputs(Path(args.out), "scale_invariance", rows, markdown, lambda p: plot(args, rows, p))
    return rows


def summary_line(args: argparse.Namespace, rows: list[dict]) -> str:
    """The last line printed: the largest deviations, the contrast, BN's gradient ratio and
    the verdicts."""
    (_, deviation, contrast, invariance), (*_, effective) = claims(rows)
    fixed = max(select(rows, "logits_change", network="bn_eps"))
    ratio = mean_std(by_seed(rows, "grad_ratio", np.mean, network="bn"), 6)
    return (
        f"BN, ε·a²: largest deviation {deviation:.1e}, gradient ratio × a {ratio}; BN, ε fixed: "
        f"largest logits change {fixed:.1e}; no BN: smallest {contrast:.2g}; scale invariance: "
        f"{invariance}, effective lr η/a²: {effective}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_experiment(argv, parse_args, run, summary_line)


if __name__ == "__main__":
    sys.exit(main())
