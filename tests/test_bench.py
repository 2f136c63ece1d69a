"""The benchmark scripts run in --quick mode and write well-formed results (no timing checks)."""

import importlib.util
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tinynorm import variants

BENCH = Path(__file__).resolve().parent.parent / "bench"
VARIANTS = {v.name for v in variants.VARIANTS}  # bench/kernels.py times every one
IN_TORCH = {v.name for v in variants.VARIANTS if v.in_torch}
HAS_TORCH = importlib.util.find_spec("torch") is not None


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in `text`: each a list of rows, each a list of cells."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


@pytest.mark.parametrize(
    "with_torch",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_TORCH, reason="no PyTorch"))],
    ids=["without-torch", "with-torch"],
)
def test_kernels_quick_writes_a_table_and_json(tmp_path, with_torch):
    out = tmp_path / "kernels.json"
    command = [sys.executable, str(BENCH / "kernels.py"), "--quick", "--json", str(out)]
    result = subprocess.run(
        command + ([] if with_torch else ["--no-torch"]),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(out.read_text())
    machine, rows = data["machine"], data["rows"]
    assert machine["threads"] == 2 and machine["cores"] >= 1 and machine["cpu"]
    assert machine["numpy"] and machine["numba"]
    assert (machine["torch"] is not None) == with_torch
    assert data["settings"]["quick"] and data["settings"]["repeat"] == 2

    impls = defaultdict(set)
    for row in rows:
        impls[row["variant"], tuple(row["shape"]), row["mode"], row["device"]].add(row["impl"])
        for field in ("ms", "gb_per_s", "copy_gb_per_s", "copy_pct"):
            assert row[field] > 0, (row, field)
        has_torch = with_torch and row["variant"] in IN_TORCH
        assert (row["ratio_to_torch"] is not None) == has_torch, row
        if has_torch:
            assert row["ratio_to_torch"] > 0
        if row["impl"] == "tinynorm":
            assert row["max_diff"] is None
        else:  # the same math: outputs agree with tinynorm's
            assert 0 <= row["max_diff"] < 1e-3, row
    assert {variant for variant, *_ in impls} == VARIANTS
    for (variant, _, mode, device), names in impls.items():
        assert mode in ("forward", "forward+backward") and device == "cpu"
        expected = {"tinynorm", "numpy"} | (
            {"torch"} if with_torch and variant in IN_TORCH else set()
        )
        assert names == expected, variant
    assert {mode for *_, mode, _ in impls} == {"forward", "forward+backward"}

    main, copies = markdown_tables(result.stdout)
    header = ["layer", "shape", "pass", "device", "impl", "ms", "GB/s", "% of copy", "× torch"]
    assert main[0] == header and len(main) == 2 + len(rows)
    assert all(len(line) == len(header) for line in main)
    measured_on = {(tuple(row["shape"]), row["device"]) for row in rows}
    assert copies[0] == ["shape", "device", "GB/s"] and len(copies) == 2 + len(measured_on)


def test_import_order_bench_writes_a_row_per_way(tmp_path):
    out = tmp_path / "order.json"
    args = ["--rounds", "1", "--steps", "1", "--batch-size", "4", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(BENCH / "import_order.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    (table,) = markdown_tables(done.stdout)
    ways = ["numpy first", "tinynorm first", "numpy first, BLAS on 2 threads"]
    ways.append("tinynorm first, BLAS on 2 threads, timeout 4")
    assert [row[0] for row in table[2:]] == ways
    assert table[3][3] == "1.00"  # tinynorm first is the reference
    seconds = json.loads(out.read_text())["seconds"]
    assert list(seconds) == ways and all(len(t) == 1 and t[0] > 0 for t in seconds.values())
