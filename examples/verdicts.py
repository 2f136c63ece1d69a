"""Numbers over seeds, and the rule that turns two settings' numbers into a verdict.

Every experiment runs each setting from several seeds (the same seed gives every setting the
same initial weights and batches) and reports mean ± sample standard deviation. A claim "A beats
B" is then judged by one rule (issue 15), with gain = mean(A) − mean(B) and noise = std(A) +
std(B):

- **reproduced** where gain > noise: the difference exceeds the spread;
- **not reproduced** where it does not and gain + noise < `effect`, the smallest difference
  the claim is taken to mean: a gain that large is ruled out by the spread;
- **inconclusive** otherwise.

Three seeds are the least; where |gain| < 2 max(std(A), std(B)), five (`needs_more_seeds`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SEEDS = (0, 1, 2)  # every experiment's default
MORE_SEEDS = (3, 4)  # added where a difference is within two standard deviations


def sample_std(values: Sequence[float]) -> float:
    """The standard deviation over the seeds (ddof 1; 0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """'0.9690 ± 0.0050': the mean and sample standard deviation of `values`."""
    return f"{np.mean(values):.{digits}f} ± {sample_std(values):.{digits}f}"


@dataclass
class Comparison:
    """The claim that `better` (per-seed values of one setting) exceeds `worse` (another's) by
    at least `effect`; `claim` says it in words, `names` name the two settings."""

    claim: str
    better: list[float]
    worse: list[float]
    effect: float
    names: tuple[str, str] = ("A", "B")
    digits: int = 4

    @property
    def gain(self) -> float:
        return float(np.mean(self.better) - np.mean(self.worse))

    @property
    def noise(self) -> float:
        return sample_std(self.better) + sample_std(self.worse)

    @property
    def seeds(self) -> int:
        return min(len(self.better), len(self.worse))

    @property
    def verdict(self) -> str:
        if self.gain > self.noise:
            return "reproduced"
        if self.gain + self.noise < self.effect:
            return "not reproduced"
        return "inconclusive"

    @property
    def needs_more_seeds(self) -> bool:
        """Fewer than 5 seeds and a difference within two standard deviations."""
        wider = max(sample_std(self.better), sample_std(self.worse))
        return self.seeds < 5 and abs(self.gain) < 2 * wider

    def numbers(self) -> str:
        """'BN 0.9690 ± 0.0050, GN 0.9697 ± 0.0036; gain -0.0007 (noise 0.0086), 5 seeds'."""
        d = self.digits
        return (
            f"{self.names[0]} {mean_std(self.better, d)}, {self.names[1]} "
            f"{mean_std(self.worse, d)}; gain {self.gain:+.{d}f} (noise {self.noise:.{d}f}, "
            f"effect {self.effect:g}), {self.seeds} seed{'s' if self.seeds != 1 else ''}"
        )

    def line(self) -> str:
        """The claim, its numbers and its verdict in one line."""
        return f"{self.claim}: {self.numbers()}: **{self.verdict}**"


def run_seeds(
    seeds: Iterable[int],
    run_seed: Callable[[int], list[dict]],
    comparisons: Callable[[list[dict]], list[Comparison]],
    more: Iterable[int] = MORE_SEEDS,
) -> list[dict]:
    """The rows of `run_seed(seed)` for every seed, then for the seeds of `more` where one of
    the `comparisons` of the rows so far needs more seeds (pass `more=()` for none)."""
    rows = [row for seed in seeds for row in run_seed(seed)]
    if any(c.needs_more_seeds for c in comparisons(rows)):
        rows += [row for seed in more for row in run_seed(seed)]
    return rows


def per_seed(rows: list[dict], key: str, **match) -> list[float]:
    """`row[key]` of every row whose fields equal `match`, in seed order."""
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return [float(r[key]) for r in sorted(chosen, key=lambda r: r["seed"])]


def verdicts_line(comparisons: list[Comparison]) -> str:
    """Every claim with its gain and verdict, in one line (an experiment's last line)."""
    found = (f"{c.claim}: {c.gain:+.4f} ({c.verdict})" for c in comparisons)
    return "; ".join(found) or "no verdict"


def verdict_table(comparisons: list[Comparison]) -> str:
    """A Markdown table: claim | numbers | verdict."""
    lines = ["| claim | numbers (mean ± std over the seeds) | verdict |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.numbers()} | {c.verdict} |" for c in comparisons]
    return "\n".join(lines)
