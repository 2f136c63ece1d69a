"""`python -m tinynorm.examples.explain --quick`: a warm-up step and a profiled one on real
data, and the graph, the profile, the Chrome trace and the kernel report of the profiled step,
each file checked for what a reader comes for."""

import json
import re

from tinynorm.examples import explain

from tinynorm import viz


def test_explain_quick_writes_graph_profile_trace_and_kernels(tmp_path, capsys):
    assert explain.main(["--quick", "--offline", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    names = {"graph.dot", "profile.txt", "trace.json", "kernels.txt"}
    if viz.dot_program():
        names.add("graph.svg")
        assert "<svg" in (tmp_path / "graph.svg").read_text()
    assert {p.name for p in tmp_path.iterdir()} == names
    for name in names:
        assert str(tmp_path / name) in printed

    dot = (tmp_path / "graph.dot").read_text()
    ops = re.findall(r'label="(\w+)\\n', dot)
    assert ops.count("Conv2d") == 2 and ops.count("Normalize") == 2
    assert "statistics per channel over (N, S)" in dot and '"1.weight\\n' in dot

    profile = (tmp_path / "profile.txt").read_text()
    rows = {tuple(line.split()[:3]) for line in profile.splitlines()}
    for op in ("Conv2d", "Normalize", "ReLU", "MaxPool2d"):
        assert (op, "forward", "2") in rows and (op, "backward", "2") in rows
    assert "└ row_moments" in profile and "optimizer.step" in profile

    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(e.get("name") == "Normalize backward" for e in trace["traceEvents"])

    kernels = (tmp_path / "kernels.txt").read_text()
    for kernel in ("row_moments", "normalize", "row_grad_sums", "combine"):
        assert f"\n{kernel}: parallel" in kernels
    assert "vectorized: yes" in kernels and "under Normalize forward: 2 calls" in kernels
