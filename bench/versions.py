"""Two versions of tinynorm on the CPU, each in its own processes: this checkout against an
earlier commit, on the norm layers of `bench/layers.py` and the training steps of
`bench/train.py` (the before/after numbers a change to a hot path owes).

    python bench/versions.py --before REV [--rounds 5] [--steps 30] [--threads 2]
                             [--layers] [--train] [--only CASES] [--json PATH]

REV is checked out into a temporary git worktree and installed there (`pip install --no-deps
--target`, so its compiled kernels are its own); each measurement is a fresh process that imports
NumPy first and then one version (the earlier one first on the import path), the versions
alternate, `--rounds` processes each, and a row gives each version's median over processes,
the range, and after/before. Run it alone, with the host's OpenBLAS overrides unset:
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/versions.py --before REV`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import common
import layers
import train

HERE = Path(__file__).resolve().parent
HEADER = ["bench", "case", "before ms", "after ms", "after / before"]
# small inputs, where a layer's fixed costs (its Python and (N, C) arithmetic) show
SMALL = [("BatchNorm2d", [16, 32, 7, 7]), ("GroupNorm(8)", [16, 32, 7, 7])]


def install(rev: str, folder: Path) -> tuple[str, Path]:
    """tinynorm at `rev`, installed into folder/site (from a worktree in folder/src), and a
    Python that imports it: a virtual environment (folder/venv) that sees this one's packages
    but not its editable tinynorm (a .pth line adds a folder without running its .pth files)."""
    src, site, venv = folder / "src", folder / "site", folder / "venv"
    git = ["git", "-C", str(HERE.parent)]
    subprocess.run([*git, "worktree", "add", "--detach", str(src), rev], check=True)
    try:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        subprocess.run([*pip, "--target", str(site), str(src)], check=True)
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(src)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python), site


def cases(args: argparse.Namespace, folder: Path) -> list[tuple[str, str, str, dict]]:
    """(bench, case, script, spec) for every measurement chosen."""
    out = []
    if args.layers:
        for layer in [*layers.LAYERS, *layers.OWN]:
            spec = {"layer": layer, "framework": "tinynorm"}
            out.append(("layers", layer, layers.__file__, spec))
        for layer, shape in SMALL + [(name, SMALL[0][1]) for name in layers.OWN]:
            spec = {"layer": layer, "framework": "tinynorm", "shape": shape}
            out.append(("layers", f"{layer} {tuple(shape)}", layers.__file__, spec))
    if args.train:
        for norm in train.NORMS:
            weights = folder / f"main-{norm}.npz"
            train.initial_weights("main", norm, weights)
            spec = {"model": "main", "norm": norm, "mode": "train", "weights": str(weights)}
            out.append(("train", f"main {norm}", train.__file__, spec | {"framework": "tinynorm"}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--rounds", type=int, default=5, help="processes per version (median)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per process (median)")
    p.add_argument("--threads", type=int, default=2, help="threads for each version")
    p.add_argument("--layers", action="store_true", help="the norm layers (bench/layers.py)")
    p.add_argument("--train", action="store_true", help="the main job's steps (bench/train.py)")
    p.add_argument("--only", help="the cases to run, ';'-separated (e.g. 'BatchNorm2d;main bn')")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if not (args.layers or args.train):
        args.layers = args.train = True
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before_python, site = install(args.before, folder)
        print(common.markdown_table(HEADER, [], left=2))
        chosen = cases(args, folder)
        if args.only:
            chosen = [c for c in chosen if c[1] in args.only.split(";")]
        for bench, case, script, spec in chosen:
            spec |= {"steps": args.steps, "threads": args.threads}
            ms: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for version in ms:
                    if version == "before":
                        result = common.run_in_process(before_python, script, spec, str(site))
                    else:
                        result = common.run_in_process(sys.executable, script, spec)
                    ms[version].append(result["ms"])
            row = {"bench": bench, "case": case}
            row |= {
                v: {"ms": statistics.median(t), "range": [min(t), max(t)]} for v, t in ms.items()
            }
            row["ratio"] = row["after"]["ms"] / row["before"]["ms"]
            rows.append(row)
            cells = [bench, case, common.cell(row["before"]["ms"]), common.cell(row["after"]["ms"])]
            print(
                common.markdown_table(
                    HEADER, [[*cells, common.cell(row["ratio"])]], left=2
                ).splitlines()[-1]
            )
    if args.json:
        import numba  # noqa: F401  (only so that `machine` reports the versions in use)
        import numpy  # noqa: F401

        info = common.machine(args.threads)
        common.write_json(args.json, info, rows, before=args.before, rounds=args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
