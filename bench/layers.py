"""Forward + backward of each norm layer that PyTorch also has: tinynorm against PyTorch, each
framework in its own processes.

    python bench/layers.py [--rounds 3] [--steps 30] [--threads 2] [--torch-python PATH]
                           [--quick] [--json PATH]

One step is the training-mode forward of a float32 input and the backward of a fixed dy
(gradients of x and of the affine parameters); x's gradient is dropped after each step, as an
activation's is in training, so no step pays for adding it to the last one.

Each measurement is a fresh process that imports NumPy first and then its framework, times 3
warm-up and `--steps` steps and reports their median; the frameworks alternate, `--rounds`
processes each, and a row gives the medians over processes and tinynorm's ratio to PyTorch.
(`bench/kernels.py` times more variants, and plain NumPy too, but with PyTorch in the same
process.) Run it alone, with the host's OpenBLAS overrides unset:
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/layers.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import common

NCHW = (64, 32, 28, 28)
# name -> (layer constructor name, arguments, input shape); the same names in both frameworks
# (not built from tinynorm.variants: a torch process must not import tinynorm)
LAYERS = {
    "BatchNorm2d": ("BatchNorm2d", (32,), NCHW),
    "GroupNorm(8)": ("GroupNorm", (8, 32), NCHW),
    "InstanceNorm2d(affine)": ("InstanceNorm2d", (32,), NCHW),
    "LayerNorm(C, H, W)": ("LayerNorm", ((32, 28, 28),), NCHW),
    "RMSNorm(C, H, W)": ("RMSNorm", ((32, 28, 28),), NCHW),
    "BatchNorm1d": ("BatchNorm1d", (1024,), (256, 1024)),
}
# tinynorm's layers without a PyTorch twin, for bench/versions.py (one version against another)
OWN = {
    name: (name, (32,), NCHW)
    for name in (
        "BatchRenorm2d",
        "FilterResponseNorm2d",
        "BatchInstanceNorm2d",
        "SwitchableNorm2d",
        "BatchLayerNorm",
    )
}


def child(spec: dict) -> dict:
    """One layer's median forward + backward, in this process (NumPy imported first)."""
    import numpy as np

    name, args, shape = {**LAYERS, **OWN}[spec["layer"]]
    shape = spec.get("shape", shape)  # another input shape (bench/versions.py's small ones)
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    kwargs = {"affine": True} if name == "InstanceNorm2d" else {}
    if spec["framework"] == "torch":
        import torch

        torch.set_num_threads(spec["threads"])
        layer = getattr(torch.nn, name)(*args, **kwargs)
        xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
    else:
        import tinynorm as tn

        tn.set_num_threads(spec["threads"])
        layer = getattr(tn.nn, name)(*args, **kwargs)
        xt, dyt = tn.tensor(x, requires_grad=True), tn.tensor(dy)

    def step() -> None:
        layer(xt).backward(dyt)
        xt.grad = None  # as in training: dx is handed on, not added to a previous one

    return {"ms": 1e3 * common.median_time(step, spec["steps"], warmup=3)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="processes per framework (median)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per process (median)")
    p.add_argument("--threads", type=int, default=2, help="threads for each framework")
    p.add_argument("--torch-python", default=sys.executable, help="the Python that has torch")
    p.add_argument("--quick", action="store_true", help="1 round, 2 steps (smoke test)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return common.child_main(args, child)
    header = ["layer", "shape", "tinynorm ms", "torch ms", "× torch"]
    print(common.markdown_table(header, [], left=2))
    rows = []
    for layer in LAYERS:
        ms: dict[str, list[float]] = {"tinynorm": [], "torch": []}
        for _ in range(args.rounds):
            for framework in ms:
                python = args.torch_python if framework == "torch" else sys.executable
                spec = {"layer": layer, "framework": framework}
                spec |= {"steps": args.steps, "threads": args.threads}
                result = common.run_in_process(python, __file__, spec)
                if result is not None:
                    ms[framework].append(result["ms"])
        row = {"layer": layer, "shape": list(LAYERS[layer][2])}
        row |= {f: statistics.median(v) for f, v in ms.items() if v}
        if ms["torch"]:
            row["ratio_to_torch"] = row["tinynorm"] / row["torch"]
        rows.append(row)
        cells = [layer, str(tuple(row["shape"])), common.cell(row["tinynorm"])]
        cells += [common.cell(row.get("torch")), common.cell(row.get("ratio_to_torch"))]
        print(common.markdown_table(header, [cells], left=2).splitlines()[-1])
    if args.json:
        import numba  # noqa: F401  (only so that `machine` reports the versions in use)
        import numpy  # noqa: F401

        common.write_json(args.json, common.machine(args.threads), rows, rounds=args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
