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


def test_train_quick_reports_the_step_and_its_breakdown(tmp_path):
    table, data = run_bench("train.py", tmp_path / "train.json", "--batch-size", "16")
    assert data["settings"]["batch_size"] == 16 and data["settings"]["norm"] == "bn"
    assert data["settings"]["torch_skipped"] == "--no-torch"
    assert data["machine"]["threads"] == 2

    steps = [r for r in data["rows"] if r["table"] == "step"]
    assert [r["framework"] for r in steps] == ["tinynorm"]
    assert steps[0]["step_ms"] > 0 and steps[0]["images_per_s"] > 0
    assert 0 < steps[0]["first_loss"] < 10  # about ln 10 for 10 random classes

    parts = [r for r in data["rows"] if r["table"] == "breakdown"]
    assert [r["category"] for r in parts] == CATEGORIES
    assert sum(r["percent"] for r in parts) == pytest.approx(100)
    for r in parts:
        assert r["ms"] >= 0 and r["percent"] >= 0
    timed = {r["category"]: r["timed"] for r in parts}
    assert timed["conv"] == ["Conv2d"] and "BatchNorm2d" in timed["norm"]
    assert timed["optimizer"] == ["SGD.step", "SGD.zero_grad"]
    for category in ("conv", "norm", "pooling", "loss", "linear", "optimizer"):
        assert next(r["ms"] for r in parts if r["category"] == category) > 0

    # the step table (header, alignment, tinynorm), then the breakdown (header, alignment,
    # one row per category and the total)
    assert table[0].startswith("| framework | step ms |") and table[2].startswith("| tinynorm |")
    assert table[3].startswith("| category |") and len(table) == 3 + 2 + len(CATEGORIES) + 1


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
