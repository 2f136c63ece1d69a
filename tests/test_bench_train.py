"""bench/train.py and bench/startup.py run in --quick mode and write well-formed results.

Only the shape of the output is checked, never a timing. Both run with --no-torch, as in a
CI without PyTorch.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
CATEGORIES = [
    "conv",
    "norm",
    "pooling",
    "activation",
    "loss",
    "linear",
    "other ops",
    "optimizer",
    "autograd bookkeeping",
]


def run_bench(script: str, out: Path, *args: str) -> tuple[list[str], dict]:
    """Run `script --quick --no-torch --json out args`: its Markdown table lines and JSON."""
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--no-torch", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    return table, json.loads(out.read_text())


def test_train_quick_times_both_passes_and_the_breakdown(tmp_path):
    """A train and an infer row for the chosen model and norm, each from its own process, and
    the step's breakdown by category adding up to the step."""
    table, data = run_bench("train.py", tmp_path / "train.json", "--models", "cnn", "--norms", "bn")
    assert data["settings"]["quick"] and data["machine"]["threads"] == 2
    rows = data["rows"]
    assert [(r["model"], r["norm"], r["mode"]) for r in rows] == [
        ("cnn", "bn", "train"),
        ("cnn", "bn", "infer"),
    ]
    for row in rows:
        assert row["tinynorm"]["ms"] > 0 and row["tinynorm"]["images_per_s"] > 0
        assert row["tinynorm"]["processes"] == 1 and "torch" not in row
    assert 0 < rows[0]["tinynorm"]["first_loss"] < 10  # about ln 10 for 10 random classes

    (entry,) = data["settings"]["breakdowns"]
    parts = entry["parts"]
    assert [p["category"] for p in parts] == CATEGORIES
    assert sum(p["percent"] for p in parts) == pytest.approx(100)
    timed = {p["category"]: p["timed"] for p in parts}
    assert timed["conv"] == ["Conv2d"] and {"BatchNorm1d", "Normalize"} <= set(timed["norm"])
    assert timed["optimizer"] == ["SGD.step", "SGD.zero_grad"]
    for category in ("conv", "norm", "pooling", "loss", "linear", "optimizer"):
        assert next(p["ms"] for p in parts if p["category"] == category) > 0

    # the rows table (header, alignment, two rows), then the breakdown (header, alignment, one
    # row per category and the total)
    assert table[0].startswith("| model | norm | pass |") and table[2].startswith("| cnn | bn |")
    assert table[4].startswith("| category |") and len(table) == 4 + 2 + len(CATEGORIES) + 1


def test_startup_quick_reports_cold_and_warm(tmp_path):
    table, data = run_bench("startup.py", tmp_path / "startup.json", "--batch-size", "8")
    assert [r["start"] for r in data["rows"]] == ["cold", "warm"]
    for r in data["rows"]:
        assert 0 < r["first_batch_s"] <= r["exit_s"] and len(r["runs"]) == 1
    settings = data["settings"]
    assert settings["cached_functions"] > 0 and settings["cached_versions"] > 0
    assert settings["numba_cache_dir"] and not Path(settings["numba_cache_dir"]).exists()
    assert "--train-limit" in settings["command"]
    assert table[0].startswith("| start | first batch s |") and len(table) == 2 + 2


def test_layers_quick_times_every_layer_in_its_own_process(tmp_path):
    """bench/layers.py --quick: one row per norm layer PyTorch also has, tinynorm timed."""
    out = tmp_path / "layers.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "layers.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == [
        "BatchNorm2d",
        "GroupNorm(8)",
        "InstanceNorm2d(affine)",
        "LayerNorm(C, H, W)",
        "RMSNorm(C, H, W)",
        "BatchNorm1d",
    ]
    for row in rows:
        assert row["tinynorm"] > 0
        assert ("torch" in row) == ("ratio_to_torch" in row)
    assert sum(line.startswith("| ") for line in done.stdout.splitlines()) == 2 + len(rows)
