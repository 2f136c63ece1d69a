"""The autograd graph behind a tensor, drawn (micrograd's `draw_dot`, for tinynorm).

    loss = tinynorm.ops.cross_entropy(model(x), y)   # any tensor that needs a gradient
    dot = tinynorm.viz.draw_graph(loss, "graph.svg", module=model)

Every op application is one node (its op name, output shape, dtype and bytes, and what
`Function.describe` adds: a norm names the statistics it pooled, so BN and GN differ in the
picture); every tensor it read that was not computed by a recorded op is a leaf, named after the
module's parameter or buffer when `module` is given ("0.weight"), else "input". Edges run from
inputs to the op that read them. The graph is the one `backward()` would walk: draw before it,
or call `backward(retain_graph=True)` to draw the gradients too (`show_values`).

The DOT text is always returned; `path` writes it (".dot") or renders it with Graphviz's `dot`
program (".svg", ".png": Debian's `graphviz`, or the `viz` extra's `graphviz-pure`, a dot that
pip installs), atomically.
"""

from __future__ import annotations

import shutil
import subprocess
from os import PathLike
from pathlib import Path

from .autograd import topological_order
from .files import atomic_write
from .tensor import Tensor

RENDERED = (".svg", ".png")


def _summary(t: Tensor, show_values: bool) -> list[str]:
    """Shape, dtype and size in bytes; with `show_values`, mean ± std of the data and grad."""
    lines = [f"{tuple(t.shape)} {t.dtype}, {t.data.nbytes:,} B"]
    if show_values:
        for name, value in (("value", t), ("grad", t.grad)):
            if value is not None and value.data.size:
                a = value.numpy()
                lines.append(f"{name} {float(a.mean()):.3g} ± {float(a.std()):.3g}")
    return lines


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def graph_nodes(output: Tensor) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """The tensors behind `output` (each after those it was computed from) and the edges
    (input, output) of every recorded op, None inputs left out."""
    if output._fn is not None and output._fn.freed:
        raise RuntimeError(
            "draw_graph: this graph was freed by backward(); draw it before, or call "
            "backward(retain_graph=True)"
        )
    order = topological_order(output, every_input=True)
    edges = [(t, node) for node in order if node._fn for t in node._fn.inputs if t is not None]
    return order, edges


def to_dot(output: Tensor, module=None, show_values: bool = False) -> str:
    """The graph behind `output` as Graphviz DOT text (see the module docstring)."""
    names = {}
    if module is not None:
        names = {id(t): n for n, t in [*module.named_parameters(), *module.named_buffers()]}
    order, edges = graph_nodes(output)
    number = {id(t): k for k, t in enumerate(order)}
    lines = ["digraph tinynorm {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for t in order:
        if t._fn is None:
            title, shape = names.get(id(t), "input"), "box"
        else:
            detail = t._fn.describe()
            title, shape = type(t._fn).__name__ + (f"\n{detail}" if detail else ""), "ellipse"
        label = _escape("\n".join([title, *_summary(t, show_values)]))
        lines.append(f'  t{number[id(t)]} [label="{label}", shape={shape}];')
    lines += [f"  t{number[id(a)]} -> t{number[id(b)]};" for a, b in edges]
    return "\n".join([*lines, "}", ""])


def dot_program() -> str | None:
    """The Graphviz renderer on the PATH: `dot`, else `graphviz-pure` (the `viz` extra), else
    None."""
    return shutil.which("dot") or shutil.which("graphviz-pure")


def draw_graph(
    output: Tensor,
    path: str | PathLike[str] | None = None,
    module=None,
    show_values: bool = False,
) -> str:
    """The autograd graph behind `output` as DOT text; written to `path` when given (".dot"
    as text, ".svg" or ".png" rendered by Graphviz's `dot`, an error naming it if absent)."""
    dot = to_dot(output, module, show_values)
    if path is None:
        return dot
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".dot", *RENDERED):
        raise ValueError(f"draw_graph: path must end with .dot, .svg or .png, got {target.name}")
    if suffix == ".dot":
        data = dot.encode()
    else:
        program = dot_program()
        if program is None:
            raise RuntimeError(
                "draw_graph: rendering needs Graphviz's `dot` program (pip install "
                "'tinynorm[viz]', or Debian's apt install graphviz); write a .dot file instead"
            )
        done = subprocess.run([program, f"-T{suffix[1:]}"], input=dot.encode(), capture_output=True)
        if done.returncode:
            message = done.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"draw_graph: {program} failed ({done.returncode}): {message}")
        data = done.stdout
    with atomic_write(target) as f:
        f.write(data)
    return dot
