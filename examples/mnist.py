"""The main job: train a CNN with a chosen normalization layer on MNIST.

Run with `python -m tinynorm.examples.mnist`. The training program itself is built in the
project's data-pipeline issue; until then this module says what it will do and exits cleanly.
"""

from __future__ import annotations

import argparse

import tinynorm

PLAN = """\
tinynorm {version}: python -m tinynorm.examples.mnist
This command will train a CNN (conv -> norm -> ReLU -> pool, twice, then a classifier) on the
bundled mnist-lite digits, offline, with any normalization layer (--norm bn, gn, ln, ...), show a
progress bar with live loss and accuracy, and end with the test accuracy on the official MNIST
test set. The data pipeline and the normalization layers are not built yet, so nothing is
trained in this version."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinynorm.examples.mnist", description=__doc__)
    parser.parse_args(argv)
    print(PLAN.format(version=tinynorm.__version__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
