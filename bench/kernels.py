"""Speed of every norm layer: tinynorm against plain NumPy and PyTorch, and a parallel copy.

    python bench/kernels.py [--threads 2] [--repeat 20] [--dtype float32] [--quick]
                            [--variants BatchNorm2d LayerNorm ...] [--no-torch] [--json PATH]

For each variant and shape, two passes: the training forward ("forward": the layer in
training mode, computing its batch statistics and keeping what backward needs) and
"forward+backward" (gradients of x and of every parameter). Each is timed for

- tinynorm: the layer, autograd included, on its Numba kernels;
- numpy: the same math in vectorized NumPy, forward and closed-form backward
  (`tinynorm.reference`; the running estimates, O(C) work, are left out);
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
import copy
import sys
from collections.abc import Callable
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
from tinynorm.variants import VARIANTS, Variant  # noqa: E402

torch = common.import_torch(ARGS.threads, enabled=not ARGS.no_torch)
cupy = common.import_cupy()

REPEAT = 2 if ARGS.quick else ARGS.repeat
IMAGE_SHAPES = ((4, 16, 8, 8),) if ARGS.quick else ((64, 32, 28, 28), (128, 64, 56, 56))
FLAT_SHAPES = ((16, 64),) if ARGS.quick else ((256, 1024),)
ALL_SHAPES = IMAGE_SHAPES + FLAT_SHAPES


def shapes(variant: Variant) -> tuple[tuple[int, ...], ...]:
    """The shapes of the ranks the variant takes."""
    return tuple(s for s in ALL_SHAPES if len(s) in variant.ranks)


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


def reference_pass(variant: Variant, layer, x, dy, mode: str) -> Callable[[], Any]:
    """One pass through the NumPy (or, on CuPy arrays, CuPy) reference of `layer`, returning y
    or dx."""
    if mode == "forward":
        return lambda: variant.reference(layer, x)
    return lambda: variant.reference(layer, x, dy)[0]


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
    params = {name: p.data.copy() for name, p in layer.named_parameters()}
    reference_layer = copy.deepcopy(layer)  # its running estimates stay as they start
    passes = {
        "tinynorm": tinynorm_pass(layer, x, dy, mode, device),
        xp.__name__: reference_pass(variant, reference_layer, xp.asarray(x), xp.asarray(dy), mode),
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
    print(f"{ARGS.dtype}, median of {REPEAT} runs; the layers of tinynorm.variants\n")
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
        for shape in shapes(variant):
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
        common.write_json(ARGS.json, info, rows, dtype=ARGS.dtype, repeat=REPEAT, quick=ARGS.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
