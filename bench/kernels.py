"""Speed of every norm layer: tinynorm against plain NumPy and PyTorch, and a parallel copy.

    python bench/kernels.py [--threads 2] [--repeat 20] [--dtype float32] [--quick]
                            [--variants BatchNorm2d LayerNorm ...] [--no-torch] [--json PATH]

For each variant and shape, two passes: the training forward ("forward": the layer in
training mode, computing its batch statistics and keeping what backward needs) and
"forward+backward" (gradients of x and of every parameter). Each is timed for

- tinynorm: the layer, autograd included, on its Numba kernels;
- numpy: the same math written out below in vectorized NumPy, forward and closed-form
  backward (the running estimates, O(C) work, are left out);
- torch: PyTorch's layer, where PyTorch has one (BatchNorm, LayerNorm, InstanceNorm,
  GroupNorm), when it is installed — never a dependency;

and, when CuPy finds a GPU, for tinynorm's CUDA kernels, the NumPy code run on CuPy arrays
(CuPy's elementwise and reduction kernels) and PyTorch on CUDA (cuDNN where it applies).

Every CPU implementation gets `--threads` threads (Numba, OpenMP, OpenBLAS, PyTorch); NumPy's
own elementwise operations and reductions run on one thread whatever the setting.

Each row gives the median time, the bandwidth achieved on the minimal bytes moved — forward
reads x and writes y (2 arrays), forward+backward also reads x and dy and writes dx (5
arrays) — as a % of a parallel copy of the same array (read + write) measured in the same run
on the same device, and the time as a ratio to PyTorch's. Before timing, each
implementation's output (y, or dx) is checked against tinynorm's: `max_diff` in the JSON is
max |out - out_tinynorm| / max |out_tinynorm|.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import common

MODES = ("forward", "forward+backward")
ARRAYS_MOVED = {"forward": 2, "forward+backward": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The common options (see `common.add_common_arguments`), --dtype and --variants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, repeat=20)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--variants", nargs="+", metavar="NAME", help="run only these layers (default: all)"
    )
    return parser.parse_args(argv)


ARGS = parse_args()
common.set_threads(ARGS.threads)

import numpy as np  # noqa: E402  (after set_threads)

import tinynorm as tn  # noqa: E402
from tinynorm.backend import get_array_module  # noqa: E402

torch = common.import_torch(ARGS.threads, enabled=not ARGS.no_torch)
cupy = common.import_cupy()

REPEAT = 2 if ARGS.quick else ARGS.repeat
IMAGE_SHAPES = ((4, 16, 8, 8),) if ARGS.quick else ((64, 32, 28, 28), (128, 64, 56, 56))
FLAT_SHAPES = ((16, 64),) if ARGS.quick else ((256, 1024),)
ALL_SHAPES = IMAGE_SHAPES + FLAT_SHAPES
GROUPS = 8  # GroupNorm's groups
RENORM_LIMITS = {"rmax": 3.0, "dmax": 5.0}


# ---- the NumPy reference: plain vectorized array code from the formulas ---------------------
#
# Each function takes x, the layer's parameters and buffers `p` (arrays), and dy; it returns y
# when dy is None, else (dx, {parameter name: gradient}). Written against the array methods
# shared by NumPy and CuPy, so the same code is the CuPy reference on a GPU.


def _standardize(x, axes: tuple[int, ...], eps: float):
    """x̂ = (x - μ)·ρ with μ and the biased σ² over `axes`, ρ = 1/sqrt(σ² + ε); (x̂, μ, ρ)."""
    mean = x.mean(axis=axes, keepdims=True)
    centered = x - mean
    rstd = ((centered * centered).mean(axis=axes, keepdims=True) + eps) ** -0.5
    return centered * rstd, mean, rstd


def _standardize_grad(g, xhat, rstd, axes: tuple[int, ...]):
    """dx for dx̂ = g through x̂ = (x - μ)·ρ, the statistics over `axes` differentiated."""
    return rstd * (
        g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    )


def _sum_like(a, p):
    """The gradient of a broadcast parameter p: a summed over the axes where p has length 1."""
    axes = tuple(i for i, n in enumerate(p.shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True)


def _rows(a):
    """(N, C, S): the spatial dims of a (N, C, *spatial) array flattened; None stays None."""
    return None if a is None else a.reshape(a.shape[0], a.shape[1], -1)


def _channel(p):
    """A per-channel vector (C,) as (1, C, 1)."""
    return p.reshape(1, -1, 1)


def _affine_norm(x, dy, w, b, axes: tuple[int, ...], eps: float = 1e-5):
    """y = x̂·w + b with x̂ standardized over `axes` (w, b broadcast against x)."""
    xhat, _, rstd = _standardize(x, axes, eps)
    if dy is None:
        return xhat * w + b
    dx = _standardize_grad(dy * w, xhat, rstd, axes)
    return dx, {"weight": _sum_like(dy * xhat, w), "bias": _sum_like(dy, b)}


def batch_norm(x, p, dy=None):
    """Per channel over N and the spatial dims."""
    return _affine_norm(_rows(x), _rows(dy), _channel(p["weight"]), _channel(p["bias"]), (0, 2))


def instance_norm(x, p, dy=None):
    """Per sample and channel over the spatial dims."""
    return _affine_norm(_rows(x), _rows(dy), _channel(p["weight"]), _channel(p["bias"]), (2,))


def layer_norm(x, p, dy=None):
    """Per sample over all other dims, elementwise affine."""

    def flat(a):
        return None if a is None else a.reshape(x.shape[0], -1)

    return _affine_norm(
        flat(x), flat(dy), p["weight"].reshape(1, -1), p["bias"].reshape(1, -1), (1,)
    )


def group_norm(x, p, dy=None):
    """Per sample over each group of C/G channels and the spatial dims; affine per channel."""

    def grouped(a):
        return None if a is None else a.reshape(x.shape[0], GROUPS, x.shape[1] // GROUPS, -1)

    w, b = (p[name].reshape(1, GROUPS, -1, 1) for name in ("weight", "bias"))
    return _affine_norm(grouped(x), grouped(dy), w, b, (2, 3))


def batch_renorm(x, p, dy=None, eps: float = 1e-5):
    """x̂ = (x - μ_B)/σ_B·r + d, r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B - μ)/σ, ±dmax),
    r and d constant in the backward pass; y = x̂·γ + β per channel."""
    x, dy = _rows(x), _rows(dy)
    w, b, mu, sigma = (_channel(p[k]) for k in ("weight", "bias", "running_mean", "running_std"))
    rmax, dmax = RENORM_LIMITS["rmax"], RENORM_LIMITS["dmax"]
    xhat, mean, rstd = _standardize(x, (0, 2), eps)
    r = (1 / (rstd * sigma)).clip(1 / rmax, rmax)
    d = ((mean - mu) / sigma).clip(-dmax, dmax)
    renormed = xhat * r + d
    if dy is None:
        return renormed * w + b
    dx = _standardize_grad(dy * (w * r), xhat, rstd, (0, 2))
    return dx, {"weight": _sum_like(dy * renormed, w), "bias": _sum_like(dy, b)}


def mean_only_batch_norm(x, p, dy=None):
    """y = x - μ_B + β per channel."""
    x, dy, b = _rows(x), _rows(dy), _channel(p["bias"])
    if dy is None:
        return x - x.mean(axis=(0, 2), keepdims=True) + b
    return dy - dy.mean(axis=(0, 2), keepdims=True), {"bias": _sum_like(dy, b)}


def _mixed_norm(x, dy, w, b, mix, eps: float, mix_grads: bool = False):
    """y = (Σ_k a_k·x̂_k)·γ + β for standardizations k = (axes, a_k) of the (N, C, S) x. With
    `mix_grads`, the gradients also hold "mix": [∂L/∂a_k] for per-channel a_k."""
    parts = [(axes, a, *_standardize(x, axes, eps)) for axes, a in mix]
    mixed = sum(a * xhat for _, a, xhat, _, _ in parts)
    if dy is None:
        return mixed * w + b
    g = dy * w
    dx = sum(_standardize_grad(g * a, xhat, rstd, axes) for axes, a, xhat, _, rstd in parts)
    grads = {"weight": _sum_like(dy * mixed, w), "bias": _sum_like(dy, b)}
    if mix_grads:
        grads["mix"] = [_sum_like(g * xhat, a) for _, a, xhat, _, _ in parts]
    return dx, grads


def batch_instance_norm(x, p, dy=None):
    """y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β, ρ per channel."""
    rho = _channel(p["rho"])
    w, b = _channel(p["weight"]), _channel(p["bias"])
    mix = [((0, 2), rho), ((2,), 1 - rho)]
    out = _mixed_norm(_rows(x), _rows(dy), w, b, mix, 1e-5, mix_grads=True)
    if dy is None:
        return out
    dx, grads = out
    d_bn, d_in = grads.pop("mix")
    return dx, {**grads, "rho": d_bn - d_in}


def batch_layer_norm(x, p, dy=None, delta: float = 1e-4):
    """y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(C) + β, m = N, ε = 1e-3."""
    N, C = x.shape[:2]
    a_bn, a_ln = ((1 - 1 / N - delta) / C**0.5, (1 / N - delta) / C**0.5)
    w, b = _channel(p["weight"]), _channel(p["bias"])
    return _mixed_norm(_rows(x), _rows(dy), w, b, [((0, 2), a_bn), ((1, 2), a_ln)], 1e-3)


def _softmax(z):
    e = get_array_module(z).exp(z - z.max())
    return e / e.sum()


def switchable_norm(x, p, dy=None, eps: float = 1e-5):
    """μ = Σ_k a_k μ_k, σ² = Σ_k b_k σ²_k over k = (IN, LN, BN), a = softmax(mean_weight),
    b = softmax(var_weight); y = (x - μ)/sqrt(σ² + ε)·γ + β. The LN and BN moments are pooled
    from the IN (per sample and channel) moments."""
    x, dy = _rows(x), _rows(dy)
    N, C, S = x.shape
    w, b = _channel(p["weight"]), _channel(p["bias"])
    a, bw = _softmax(p["mean_weight"]), _softmax(p["var_weight"])
    m_in = x.mean(axis=2, keepdims=True)
    e2_in = (x * x).mean(axis=2, keepdims=True)
    pooled = [(m_in, e2_in, S)]  # (E[x], E[x²], values per statistic) for IN, LN, BN
    for axis, m in ((1, C * S), (0, N * S)):
        pooled.append(
            (m_in.mean(axis=axis, keepdims=True), e2_in.mean(axis=axis, keepdims=True), m)
        )
    var = [e2 - m1 * m1 for m1, e2, _ in pooled]
    mean = sum(a[k] * m1 for k, (m1, _, _) in enumerate(pooled))
    rstd = (sum(bw[k] * v for k, v in enumerate(var)) + eps) ** -0.5
    xhat = (x - mean) * rstd
    if dy is None:
        return xhat * w + b
    g = dy * w
    dmean = -rstd * g.sum(axis=2, keepdims=True)  # ∂L/∂μ per (n, c)
    dvar = -0.5 * rstd * rstd * (g * xhat).sum(axis=2, keepdims=True)  # ∂L/∂σ²
    # each statistic k: ∂L/∂E_k[x] and ∂L/∂E_k[x²], summed over the rows it pools, over m_k
    coef_1, coef_x = 0, 0
    for k, ((m1, _, m), axes) in enumerate(zip(pooled, ((), (1,), (0,)))):
        dm = a[k] * dmean.sum(axis=axes, keepdims=True)
        dv = bw[k] * dvar.sum(axis=axes, keepdims=True)
        coef_1 = coef_1 + (dm - 2 * m1 * dv) / m
        coef_x = coef_x + 2 * dv / m
    dx = g * rstd + coef_1 + coef_x * x
    da = get_array_module(x).stack([(dmean * m1).sum() for m1, _, _ in pooled])
    db = get_array_module(x).stack([(dvar * v).sum() for v in var])
    grads = {
        "weight": _sum_like(dy * xhat, w),
        "bias": _sum_like(dy, b),
        "mean_weight": a * (da - (a * da).sum()),
        "var_weight": bw * (db - (bw * db).sum()),
    }
    return dx, grads


# ---- the variants -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One norm layer: `make(nn, shape)` builds it from tinynorm.nn or torch.nn for inputs of
    `shape`; `reference` is its NumPy code; `in_torch`: PyTorch has the layer too."""

    name: str
    make: Callable[[Any, tuple[int, ...]], Any]
    reference: Callable
    in_torch: bool = False
    shapes: tuple[tuple[int, ...], ...] = IMAGE_SHAPES


def _renorm(nn, s):
    """Batch renorm with its limits in force from the first step (no warm-up ramp)."""
    return nn.BatchRenorm2d(s[1], **RENORM_LIMITS, warmup_steps=0, rmax_steps=0, dmax_steps=0)


VARIANTS = [
    Variant("BatchNorm2d", lambda nn, s: nn.BatchNorm2d(s[1]), batch_norm, True),
    Variant("BatchRenorm2d", _renorm, batch_renorm),
    Variant("LayerNorm", lambda nn, s: nn.LayerNorm(s[1:]), layer_norm, True, ALL_SHAPES),
    Variant(
        "InstanceNorm2d", lambda nn, s: nn.InstanceNorm2d(s[1], affine=True), instance_norm, True
    ),
    Variant("GroupNorm", lambda nn, s: nn.GroupNorm(GROUPS, s[1]), group_norm, True),
    Variant(
        "MeanOnlyBatchNorm2d", lambda nn, s: nn.MeanOnlyBatchNorm2d(s[1]), mean_only_batch_norm
    ),
    Variant("BatchInstanceNorm2d", lambda nn, s: nn.BatchInstanceNorm2d(s[1]), batch_instance_norm),
    Variant("SwitchableNorm2d", lambda nn, s: nn.SwitchableNorm2d(s[1]), switchable_norm),
    Variant("BatchLayerNorm", lambda nn, s: nn.BatchLayerNorm(s[1]), batch_layer_norm),
    Variant("BatchNorm1d", lambda nn, s: nn.BatchNorm1d(s[1]), batch_norm, True, FLAT_SHAPES),
]


# ---- the measurements -----------------------------------------------------------------------


def tinynorm_pass(layer, x, dy, mode: str, device: str) -> Callable[[], Any]:
    """One pass through the tinynorm layer (autograd included) on `device`, returning y or
    dx."""
    xt = tn.tensor(x, requires_grad=mode != "forward", device=device)
    if mode == "forward":
        return lambda: layer(xt).data
    dyt = tn.tensor(dy, device=device)

    def forward_backward():
        xt.grad = None
        layer.zero_grad()
        layer(xt).backward(dyt)
        return xt.grad.data

    return forward_backward


def reference_pass(variant: Variant, params: dict, x, dy, mode: str) -> Callable[[], Any]:
    """One pass through the NumPy (or, on CuPy arrays, CuPy) reference, returning y or dx."""
    if mode == "forward":
        return lambda: variant.reference(x, params).reshape(x.shape)
    return lambda: variant.reference(x, params, dy)[0].reshape(x.shape)


def torch_pass(
    variant: Variant, shape, params: dict, x, dy, mode: str, device: str
) -> Callable[[], Any]:
    """One pass through PyTorch's layer in training mode with the parameters `params`,
    returning y or dx."""
    layer = variant.make(torch.nn, shape).to(device, getattr(torch, ARGS.dtype))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.from_numpy(to_numpy(params[name])))
    xt = torch.from_numpy(x).to(device).requires_grad_(mode != "forward")
    if mode == "forward":
        return lambda: layer(xt)
    dyt = torch.from_numpy(dy).to(device)

    def forward_backward():
        xt.grad = None
        layer.zero_grad()
        layer(xt).backward(dyt)
        return xt.grad

    return forward_backward


def implementations(variant: Variant, shape, x, dy, mode: str, device: str) -> dict:
    """{name: one pass} for every implementation on `device`, each with a fresh layer. The
    parameters are drawn from U(0.2, 0.9) (away from the defaults, so that checking the outputs
    exercises every term); the reference and PyTorch start from the tinynorm layer's."""
    layer = variant.make(tn.nn, shape).to(np.dtype(ARGS.dtype)).to(device)
    xp = cupy if device == "cuda" else np
    rng = np.random.default_rng(1)
    for p in layer.parameters():
        p.data[...] = xp.asarray(rng.uniform(0.2, 0.9, p.shape))
    params = {
        name: t.data.copy() for name, t in [*layer.named_parameters(), *layer.named_buffers()]
    }
    passes = {
        "tinynorm": tinynorm_pass(layer, x, dy, mode, device),
        xp.__name__: reference_pass(variant, params, xp.asarray(x), xp.asarray(dy), mode),
    }
    if torch is not None and variant.in_torch and (device == "cpu" or torch.cuda.is_available()):
        passes["torch"] = torch_pass(variant, shape, params, x, dy, mode, device)
    return passes


def to_numpy(a) -> np.ndarray:
    """A NumPy copy of a NumPy, CuPy or PyTorch array."""
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return a.get() if hasattr(a, "get") else np.asarray(a)


def measure(variant: Variant, shape, device: str, copy_gbs: float) -> list[dict]:
    """The rows of one variant at one shape on one device: both passes, every implementation."""
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal(shape).astype(ARGS.dtype) for _ in range(2))
    sync = cupy.cuda.Device().synchronize if device == "cuda" else None
    rows = []
    for mode in MODES:
        passes = implementations(variant, shape, x, dy, mode, device)
        outputs = {name: to_numpy(run()) for name, run in passes.items()}
        expected = outputs["tinynorm"]
        seconds = {name: common.median_time(run, REPEAT, sync=sync) for name, run in passes.items()}
        for name, t in seconds.items():
            gbs = ARRAYS_MOVED[mode] * x.nbytes / t / 1e9
            diff = np.abs(outputs[name] - expected).max() / np.abs(expected).max()
            rows.append(
                {
                    "variant": variant.name,
                    "shape": list(shape),
                    "mode": mode,
                    "device": device,
                    "impl": name,
                    "ms": 1e3 * t,
                    "gb_per_s": gbs,
                    "copy_gb_per_s": copy_gbs,
                    "copy_pct": 100 * gbs / copy_gbs,
                    "ratio_to_torch": t / seconds["torch"] if "torch" in seconds else None,
                    "max_diff": None if name == "tinynorm" else float(diff),
                }
            )
    return rows


def print_table(rows: list[dict], info: dict) -> None:
    """The machine, the rows as a Markdown table, and the copy bandwidths they compare with."""
    print(common.describe(info))
    print(f"{ARGS.dtype}, median of {REPEAT} runs; GroupNorm with {GROUPS} groups\n")
    header = ["layer", "shape", "pass", "device", "impl", "ms", "GB/s", "% of copy", "× torch"]
    cells = [
        [
            r["variant"],
            str(tuple(r["shape"])),
            r["mode"],
            r["device"],
            r["impl"],
            common.cell(r["ms"], ".3f"),
            common.cell(r["gb_per_s"], ".1f"),
            common.cell(r["copy_pct"], ".0f") + "%",
            common.cell(r["ratio_to_torch"]),
        ]
        for r in rows
    ]
    print(common.markdown_table(header, cells, left=5))
    copies = {(str(tuple(r["shape"])), r["device"]): r["copy_gb_per_s"] for r in rows}
    print('\nParallel copy (read + write), the reference of "% of copy":\n')
    copy_cells = [[shape, device, f"{gbs:.1f}"] for (shape, device), gbs in copies.items()]
    print(common.markdown_table(["shape", "device", "GB/s"], copy_cells, left=2))


def main() -> int:
    selected = [v for v in VARIANTS if ARGS.variants is None or v.name in ARGS.variants]
    unknown = set(ARGS.variants or ()) - {v.name for v in VARIANTS}
    if unknown:
        names = ", ".join(v.name for v in VARIANTS)
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {names}")
    devices = ["cpu", "cuda"] if cupy is not None else ["cpu"]
    copy_gbs: dict[tuple, float] = {}
    rows = []
    for variant in selected:
        for shape in variant.shapes:
            for device in devices:
                if (shape, device) not in copy_gbs:
                    xp = cupy if device == "cuda" else np
                    sample = xp.ones(shape, ARGS.dtype)
                    copy_gbs[shape, device] = common.copy_bandwidth(sample, REPEAT)
                print(f"{variant.name} {shape} {device}", file=sys.stderr, flush=True)
                rows += measure(variant, shape, device, copy_gbs[shape, device])
    info = common.machine(ARGS.threads)
    print_table(rows, info)
    if ARGS.json:
        common.write_json(
            ARGS.json, info, rows, dtype=ARGS.dtype, repeat=REPEAT, quick=ARGS.quick, groups=GROUPS
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
