"""The engine's profiling hook through `tinynorm.profile()`: exact counts per op and pass, and
nothing recorded outside its block. No timing is asserted beyond being a non-negative float
(tests/test_profiler.py checks the kernels, ranges, memory and trace)."""

import pytest

import tinynorm as tn
from tinynorm import autograd, profiler


def small_graph():
    """matmul, relu, sum: three ops, each run once."""
    x = tn.randn(4, 3, requires_grad=True)
    w = tn.randn(3, 2, requires_grad=True)
    return (x @ w).relu().sum()


KEYS = {(op, p) for op in ("MatMul", "ReLU", "Sum") for p in ("forward", "backward")}


def test_each_op_counted_once_per_pass():
    with tn.profile() as prof:
        small_graph().backward()
    assert prof.calls == dict.fromkeys(KEYS, 1)
    assert set(prof.seconds) == KEYS
    for seconds in prof.seconds.values():
        assert isinstance(seconds, float) and seconds >= 0


def test_counts_add_up_over_calls_and_an_input_used_twice():
    x = tn.randn(5, requires_grad=True)
    with tn.profile() as prof:
        for _ in range(3):
            (x * x).sum().backward()
    assert prof.calls == {
        ("Mul", "forward"): 3,
        ("Mul", "backward"): 3,
        ("Sum", "forward"): 3,
        ("Sum", "backward"): 3,
    }


def test_forward_without_a_graph_is_counted_and_has_no_backward():
    with tn.no_grad(), tn.profile() as prof:
        small_graph()
    assert prof.calls == {("MatMul", "forward"): 1, ("ReLU", "forward"): 1, ("Sum", "forward"): 1}


def test_nothing_recorded_outside_the_block():
    loss = small_graph()  # forward before: not counted
    with tn.profile() as prof:
        loss.backward()
    assert {key[1] for key in prof.calls} == {"backward"}
    recorded = (dict(prof.calls), dict(prof.seconds))
    small_graph().backward()  # after the block: nothing more
    assert (prof.calls, prof.seconds) == recorded
    assert autograd._profiler is None


def test_an_exception_inside_closes_the_block():
    with pytest.raises(ValueError, match="inside"), tn.profile() as prof:
        small_graph()
        raise ValueError("inside")
    assert autograd._profiler is None
    small_graph().backward()
    assert sum(prof.calls.values()) == 3  # the three forwards before the exception
    with tn.profile() as again:  # a new block opens
        small_graph()
    assert sum(again.calls.values()) == 3


class Fails(autograd.Function):
    def forward(self, x):
        raise ValueError("in forward")


def test_an_error_inside_an_op_is_counted_and_closes_the_block():
    with pytest.raises(ValueError, match="in forward"), tn.profile() as prof:
        Fails.apply(tn.randn(2))
    assert prof.calls == {("Fails", "forward"): 1}
    assert autograd._profiler is None


def test_blocks_do_not_nest():
    with tn.profile() as outer:
        with pytest.raises(RuntimeError, match="do not nest"), tn.profile():
            pass
        small_graph()  # the outer block goes on
    assert sum(outer.calls.values()) == 3
    assert autograd._profiler is None


def test_rows_and_table():
    with tn.profile() as prof:
        small_graph().backward()
    rows = prof.rows()
    assert {(r["op"], r["pass"]) for r in rows} == KEYS
    assert all(r["calls"] == 1 for r in rows)
    assert [r["seconds"] for r in rows] == sorted((r["seconds"] for r in rows), reverse=True)
    lines = str(prof).splitlines()
    assert str(prof) == prof.table()
    assert lines[0].split()[:6] == ["op", "/", "kernel", "pass", "calls", "total"]
    ops = [line.split()[:3] for line in lines[1:] if line and not line.startswith(" ")][:3]
    assert ops == [[r["op"], r["pass"], "1"] for r in rows][:3]
    with pytest.raises(ValueError, match="sort_by must be one of"):
        prof.table(sort_by="cpu_time")


def test_exported():
    assert tn.profile is profiler.profile
    with tn.profile() as prof:
        pass
    assert isinstance(prof, profiler.Profiler) and prof.rows() == [] and prof.calls == {}
