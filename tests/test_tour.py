"""docs/TOUR.md stays true: every file:line it cites exists and still holds the symbol named
in the link, every link into the repository is such a citation, and the commands it tells a
reader to run exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "docs" / "TOUR.md"
CITATION = re.compile(r"\[`([^`]+)`\]\(\.\./([^#)\s]+)#L(\d+)\) \(([^:)\s]+):(\d+)\)")


def citations() -> list[tuple[str, str, int]]:
    text = TOUR.read_text()
    found = []
    for symbol, path, line, shown_path, shown_line in CITATION.findall(text):
        assert (path, line) == (shown_path, shown_line), f"link and text differ: {path}:{line}"
        found.append((symbol, path, int(line)))
    return found


def test_every_cited_line_holds_its_symbol():
    cited = citations()
    assert len(cited) >= 40
    wrong = []
    for symbol, path, line in cited:
        lines = (ROOT / path).read_text().splitlines()
        if not 1 <= line <= len(lines) or symbol not in lines[line - 1]:
            where = [i + 1 for i, text in enumerate(lines) if symbol in text]
            wrong.append(f"{path}:{line} lacks {symbol!r} (now at {where})")
    assert not wrong, "\n".join(wrong)


def test_every_repository_link_is_a_checked_citation():
    links = re.findall(r"\]\((\.\./[^)]*)\)", TOUR.read_text())
    assert len(links) == len(citations())


def test_the_tour_covers_one_whole_step():
    files = {path for _, path, _ in citations()}
    for path in (
        "examples/mnist.py",
        "tinynorm/tensor.py",
        "tinynorm/autograd.py",
        "tinynorm/ops/normalize.py",
        "kernels/__init__.py",
        "kernels/cpu.py",
        "tinynorm/optim/sgd.py",
        "tinynorm/profiler.py",
    ):
        assert path in files, path
    assert "python -m tinynorm.examples.explain" in TOUR.read_text()
    assert (ROOT / "examples" / "explain.py").exists()
