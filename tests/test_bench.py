"""The benchmark scripts run in --quick mode and write well-formed results (no timing checks)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_norm_cpu_quick_writes_a_table_and_json(tmp_path):
    out = tmp_path / "norm.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "norm_cpu.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| layer | shape |") and len(table) == 1 + 4
    data = json.loads(out.read_text())
    assert data["machine"]["threads"] == 2 and data["machine"]["cores"] >= 1
    layers = [row["layer"] for row in data["rows"]]
    assert layers == ["BatchNorm2d", "LayerNorm", "GroupNorm(8)", "InstanceNorm2d"]
    for row in data["rows"]:
        assert row["tinynorm_ms"] > 0 and row["copy_pct"] > 0 and row["gb_per_s"] > 0
