"""`tinynorm.profiler`: counts that match the graph of a real training step, kernels under the
op that launched them with the bytes they must move, times that nest (an op within the block,
a kernel within its op), ranges, allocations and a Chrome trace of the expected format. No
timing is asserted against a number: only the order of nested intervals."""

import collections
import json
import tracemalloc

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import kernels, nn, profiler, viz
from tinynorm.ops import cross_entropy


def small_cnn():
    tn.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    )


def step(model, optimizer):
    """One training step on fixed data; the loss tensor (its graph kept for counting)."""
    rng = np.random.default_rng(0)
    x = tn.tensor(rng.standard_normal((6, 1, 10, 10)).astype(np.float32))
    y = tn.tensor(rng.integers(0, 3, 6))
    loss = cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward(retain_graph=True)
    with profiler.record_function("optimizer.step"):
        optimizer.step()
    return loss


def test_counts_equal_the_op_applications_of_a_training_step():
    model = small_cnn()
    optimizer = tn.optim.SGD(model.parameters(), lr=0.1)
    step(model, optimizer)  # compile first
    with profiler.profile() as prof:
        loss = step(model, optimizer)
    nodes, _ = viz.graph_nodes(loss)
    applied = collections.Counter(type(t._fn).__name__ for t in nodes if t._fn is not None)
    expected = {(op, p): n for op, n in applied.items() for p in ("forward", "backward")}
    assert prof.calls == expected
    assert {"Conv2d", "Normalize", "ReLU", "MaxPool2d", "Linear", "CrossEntropy"} <= set(applied)


def test_times_nest_in_the_block_and_kernels_in_their_op():
    model = small_cnn()
    optimizer = tn.optim.SGD(model.parameters(), lr=0.1)
    step(model, optimizer)
    with profiler.profile() as prof:
        step(model, optimizer)
    top = [e for e in prof.events if e.kind != "kernel" and e.parent is None]
    assert sum(e.seconds for e in top) <= prof.wall_seconds
    for e in prof.events:
        assert prof.start <= e.start <= e.end <= prof.end
        if e.parent is not None:
            assert e.parent.start <= e.start and e.end <= e.parent.end
    norm = {r["pass"]: r for r in prof.rows() if r["op"] == "Normalize"}
    assert [k["kernel"] for k in norm["forward"]["kernels"]] != []
    for r in norm.values():
        assert sum(k["seconds"] for k in r["kernels"]) <= r["seconds"]
    names = {k["kernel"] for r in norm.values() for k in r["kernels"]}
    assert {"row_moments", "normalize", "row_grad_sums", "combine"} <= names
    step_range = prof.ranges()
    assert [r["name"] for r in step_range] == ["optimizer.step"]
    assert 0 <= step_range[0]["self_seconds"] <= step_range[0]["seconds"]


def test_kernel_bytes_are_its_arrays_once():
    x = tn.randn(3, 5, 7)
    with profiler.profile() as prof:
        x.relu()
    (row,) = prof.rows()
    (k,) = row["kernels"]
    assert (row["op"], k["kernel"], k["calls"]) == ("ReLU", "relu", 1)
    assert k["bytes"] == 2 * x.data.nbytes  # x read, y written
    assert k["gbps"] == pytest.approx(k["bytes"] / k["seconds"] / 1e9)


def test_kernels_on_worker_threads_count_under_their_op():
    model = nn.Conv2d(2, 3, 3, padding=1)
    x = tn.randn(8, 2, 9, 9, requires_grad=True)
    with profiler.profile() as prof:
        model(x).sum().backward()
    conv = [r for r in prof.rows() if r["op"] == "Conv2d"]
    assert all(r["kernels"] for r in conv)
    assert "(no op)" not in {r["op"] for r in prof.rows()}
    threads = {e.thread for e in prof.events if e.kind == "kernel"}
    assert threads <= set(prof.thread_names)


def test_a_kernel_outside_any_op():
    a = np.ones((4, 4), np.float32)
    with profiler.profile() as prof:
        kernels.transpose(a)
    (row,) = prof.rows()
    assert (row["op"], row["calls"], row["kernels"][0]["kernel"]) == ("(no op)", 0, "transpose")
    assert "(no op)" in prof.table()


def test_ranges_take_out_what_ran_inside():
    x = tn.randn(200, 200, requires_grad=True)
    with (
        profiler.profile() as prof,
        profiler.record_function("outer"),
        profiler.record_function("inner"),
    ):
        (x @ x).sum()
    outer, inner = sorted(prof.ranges(), key=lambda r: r["name"] != "outer")
    assert outer["name"] == "outer" and inner["name"] == "inner"
    assert outer["self_seconds"] == pytest.approx(outer["seconds"] - inner["seconds"])
    ops = sum(prof.seconds.values())
    assert inner["self_seconds"] == pytest.approx(inner["seconds"] - ops)
    with profiler.record_function("nothing open"):  # no profile: nothing to record into
        pass
    assert len(prof.ranges()) == 2


def test_memory_counts_what_an_op_keeps():
    a = tn.randn(300, 400, dtype=tn.float64, requires_grad=True)
    was_tracing = tracemalloc.is_tracing()
    with profiler.profile(memory=True) as prof:
        a * 2.0
    (row,) = prof.rows(sort_by="allocated")
    assert row["allocated"] >= a.data.nbytes  # the product, at least
    assert row["peak"] >= row["allocated"]
    assert tracemalloc.is_tracing() == was_tracing
    assert "alloc MB" in prof.table()


def test_chrome_trace(tmp_path):
    model = small_cnn()
    optimizer = tn.optim.SGD(model.parameters(), lr=0.1)
    with profiler.profile() as prof:
        step(model, optimizer)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(path)
    data = json.loads(path.read_text())
    assert data["displayTimeUnit"] == "ms"
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    names = [e for e in data["traceEvents"] if e["ph"] == "M"]
    assert len(spans) == len(prof.events)
    assert {e["cat"] for e in spans} == {"op", "kernel", "range"}
    assert {e["tid"] for e in spans} <= {e["tid"] for e in names}
    for e in spans:
        assert set(e) == {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"}
        assert e["ts"] >= 0 and e["dur"] >= 0
    assert any(e["name"] == "Normalize forward" for e in spans)
    assert all(e["args"]["bytes"] > 0 for e in spans if e["cat"] == "kernel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]


def test_copy_bandwidth_is_measured():
    assert kernels.copy_bandwidth() > 1e8  # bytes per second; any machine copies 0.1 GB/s
