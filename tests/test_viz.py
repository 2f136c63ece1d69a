"""tinynorm.viz: the drawn autograd graph (DOT text, labels, module names, values, files)."""

import re
import shutil

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import nn, ops, viz


def nodes_and_edges(dot: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    nodes = dict(re.findall(r'^  (t\d+) \[label="(.*)", shape=\w+\];$', dot, re.M))
    edges = re.findall(r"^  (t\d+) -> (t\d+);$", dot, re.M)
    return nodes, edges


def small_graph():
    """sum((a + b)·a) with a = 0..5 and b = 1, (2, 3) each: dL/da = 2a + b, dL/db = a."""
    a = tn.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    b = tn.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    return ops.sum(ops.mul(ops.add(a, b), a))


def test_small_graph_counts_labels_and_edges():
    out = small_graph()
    nodes, edges = nodes_and_edges(viz.draw_graph(out))
    labels = sorted(label.split("\\n")[0] for label in nodes.values())
    assert labels == ["Add", "Mul", "Sum", "input", "input"]
    assert len(edges) == 5  # a, b -> Add; Add, a -> Mul; Mul -> Sum
    node = {label.split("\\n")[0]: name for name, label in nodes.items()}
    assert (node["Add"], node["Mul"]) in edges
    assert (node["Mul"], node["Sum"]) in edges
    assert "(2, 3) float32, 24 B" in nodes[node["Add"]]


def test_norm_nodes_name_their_statistics_and_module_names_the_leaves():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4)
    )
    x = tn.Tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    nodes, _ = nodes_and_edges(viz.draw_graph(ops.sum(model(x)), module=model))
    labels = list(nodes.values())
    assert any("statistics per channel over (N, S)" in t for t in labels)  # BN
    assert any("statistics per sample and 2 channels over (2, S)" in t for t in labels)  # GN
    titles = {t.split("\\n")[0] for t in labels}
    assert {"0.weight", "0.bias", "1.weight", "3.bias", "input"} <= titles
    model.eval()
    nodes, _ = nodes_and_edges(viz.draw_graph(ops.sum(model(x)), module=model))
    assert any("fixed statistics per channel over (N, S)" in t for t in nodes.values())


def test_mixture_lists_each_component():
    x = tn.Tensor(np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32))
    nodes, _ = nodes_and_edges(viz.draw_graph(ops.sum(nn.BatchLayerNorm(3)(x))))
    label = next(t for t in nodes.values() if t.startswith("MixedNormalize"))
    assert "statistics per channel over (N, S)" in label  # the BN part
    assert "statistics per sample and 3 channels over (3, S)" in label  # the LN part


def test_show_values_after_a_retained_backward():
    out = small_graph()
    out.backward(retain_graph=True)
    dot = viz.draw_graph(out, show_values=True)
    assert "value 2.5 ± 1.71\\ngrad 6 ± 3.42" in dot  # a = 0..5, dL/da = 2a + 1
    assert "value 1 ± 0\\ngrad 2.5 ± 1.71" in dot  # b = 1, dL/db = a


def test_a_freed_graph_is_an_error():
    out = small_graph()
    out.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        viz.draw_graph(out)


def test_files_dot_and_bad_suffix(tmp_path):
    out = small_graph()
    dot = viz.draw_graph(out, tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == dot
    with pytest.raises(ValueError, match=r"\.dot, \.svg or \.png"):
        viz.draw_graph(out, tmp_path / "g.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]


def test_a_failing_dot_is_a_clear_error(tmp_path, monkeypatch):
    out = small_graph()
    monkeypatch.setattr(shutil, "which", lambda name: "false")  # exits 1, writes nothing
    with pytest.raises(RuntimeError, match="false failed"):
        viz.draw_graph(out, tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []


def test_render_without_dot_names_the_program(tmp_path, monkeypatch):
    out = small_graph()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Graphviz"):
        viz.draw_graph(out, tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    viz.dot_program() is None,
    reason="no dot program: pip install 'tinynorm[viz]'",
)
def test_render_svg_and_png(tmp_path):
    out = small_graph()
    viz.draw_graph(out, tmp_path / "g.svg")
    viz.draw_graph(out, tmp_path / "g.png")
    assert "<svg" in (tmp_path / "g.svg").read_text()
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
