"""Batch norm's scale invariance (seed 002), on a tiny subset of mnist-lite, offline."""

import csv
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from tinynorm.examples import common
from tinynorm.examples import scale_invariance as si
from tinynorm.examples.mnist import build_model

import tinynorm as tn
from tinynorm.data import MNIST, FashionMNIST

# the bundled mnist-lite as the data directory: no cached full MNIST, no download
MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "300", "--test-limit", "100"]
TINY += ["--steps", "4", "--check-every", "2", "--width", "4", "--batch-size", "16"]
TINY += ["--scales", "0.1", "10", "--seeds", "0", "1"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COLUMNS = [
    "seed",
    "step",
    "test_accuracy",
    "network",
    "scaled",
    "a",
    "logits_change",
    "loss_change",
    "grad_ratio",
    "grad_error",
    "other_grad_change",
    "lr_change",
    "lr_plain_change",
]


def read_rows(path) -> list[dict]:
    """The CSV's rows, numbers as floats (blank cells stay '')."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("network", "scaled")
    return [{k: v if k in text or v == "" else float(v) for k, v in r.items()} for r in rows]


def deviation(row: dict) -> float:
    """The largest of a row's measures that the identity makes 0, and |ratio × a − 1|."""
    return max(*(row[k] for k in si.SHOULD_BE_ZERO), abs(row["grad_ratio"] - 1))


def test_scale_invariance_writes_well_formed_outputs_that_show_the_identity(tmp_path, capsys):
    out = tmp_path / "out"
    assert si.main([*TINY, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_rows(out / "scale_invariance.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["seed"], r["step"], r["network"], r["scaled"], r["a"]) for r in rows] == [
        (seed, step, network, scaled, a)
        for seed in (0, 1)
        for step in (0, 2, 4)
        for network in ("bn", "bn_eps", "none")
        for scaled in ("conv1", "conv2", "both")
        for a in (0.1, 10)
    ]
    assert all(0 <= r["test_accuracy"] <= 1 for r in rows)
    exact, fixed, plain = ([r for r in rows if r["network"] == n] for n in si.NETWORKS)
    # BN with ε scaled along: float32 rounding, the gradient divided by a exactly
    assert max(deviation(r) for r in exact) < 1e-5
    assert (
        max(r["lr_change"] for r in exact) < 1e-5 < 1e-3 < min(r["lr_plain_change"] for r in exact)
    )
    # BN with ε fixed: ε's share shows at a = 0.1, still small next to no BN's change
    assert max(r["logits_change"] for r in fixed) < 0.1
    shown = max(r["logits_change"] for r in fixed if r["a"] == 0.1)
    assert shown > 100 * max(r["logits_change"] for r in exact)
    # without BN, scaling a conv changes the output and the gradient is not divided by a
    assert min(r["logits_change"] for r in plain) > 0.1
    assert min(abs(r["grad_ratio"] - 1) for r in plain) > 0.05
    assert all(r["lr_change"] == r["lr_plain_change"] == "" for r in fixed + plain)

    markdown = (out / "scale_invariance.md").read_text()
    assert "| network | a | logits change (max) | loss change (max) |" in markdown
    assert markdown.count("| BN, ε·a² | ") == markdown.count("| no BN | ") == 2
    assert "seeds 0, 1. Data: MNIST, train 300 of 10,000 images" in markdown
    assert "Checked at steps 0, 2, 4 on a fixed batch of 16 training images" in markdown
    worst = max(deviation(r) for r in exact)
    assert f"divides its gradient by a | {worst:.2e} | " in markdown
    assert markdown.count("| reproduced |") == 2
    figure = {"scale_invariance.png"} if HAVE_MATPLOTLIB else set()
    written = {p.name for p in out.iterdir()}  # no temporary file left behind
    assert written == {"scale_invariance.csv", "scale_invariance.md", *figure}

    contrast = min(r["logits_change"] for r in plain)
    assert last.startswith(f"BN, ε·a²: largest deviation {worst:.1e}, gradient ratio × a 1.0000")
    assert f"no BN: smallest {contrast:.2g}; " in last
    assert last.endswith("scale invariance: reproduced, effective lr η/a²: reproduced")


def test_scale_invariance_verdicts_follow_the_tolerance_and_the_contrast():
    assert si.verdict(2e-6, 0.5) == "reproduced"
    assert si.verdict(si.TOLERANCE, 0.5) == "not reproduced"
    assert si.verdict(float("nan"), 0.5) == "not reproduced"
    assert si.verdict(2e-6, 5e-4) == "inconclusive"

    def row(network: str, change: float, ratio: float = 1.0) -> dict:
        lr, plain = (change, 0.2) if network == "bn" else ("", "")
        row = dict(network=network, a=2.0, grad_ratio=ratio, lr_change=lr, lr_plain_change=plain)
        return row | dict.fromkeys(si.SHOULD_BE_ZERO, change)

    good = [row("bn", 1e-6), row("bn_eps", 1e-3), row("none", 0.7, 3.0)]
    assert [v for *_, v in si.claims(good)] == ["reproduced", "reproduced"]
    bad_ratio = [row("bn", 1e-6, 1.001), *good[1:]]  # the gradient not divided by a
    assert [v for *_, v in si.claims(bad_ratio)] == ["not reproduced", "reproduced"]
    no_contrast = [*good[:2], row("none", 1e-4)]  # a no-BN net that hardly changes
    assert si.claims(no_contrast)[0][1:] == (1e-6, 1e-4, "inconclusive")


def test_scale_invariance_same_seed_same_results_whatever_the_other_seeds(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert si.main([*TINY, "--out", str(both)]) == 0
    assert si.main([*TINY, "--seeds", "1", "--out", str(alone)]) == 0
    seed_1 = [r for r in read_rows(both / "scale_invariance.csv") if r["seed"] == 1]
    assert read_rows(alone / "scale_invariance.csv") == seed_1
    seed_0 = [r for r in read_rows(both / "scale_invariance.csv") if r["seed"] == 0]
    assert [r["grad_ratio"] for r in seed_0] != [r["grad_ratio"] for r in seed_1]


def test_scale_invariance_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert si.main([*TINY, "--seeds", "0", "--steps", "1", "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.name for p in out.iterdir()} == {"scale_invariance.csv", "scale_invariance.md"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scales", "0"], "--scales must be positive and finite, and not 1"),
        (["--scales", "2", "1"], "--scales must be positive and finite, and not 1"),
        (["--scales", "inf"], "--scales must be positive and finite, and not 1"),
        (["--steps", "0"], "--steps, --check-every and --width must be >= 1"),
        (["--probe-lr", "-1"], "--lr and --probe-lr > 0"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--seeds", "one"], "argument --seeds: invalid int value: 'one'"),
    ],
)
def test_scale_invariance_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        si.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_scale_invariance_bad_data_or_training_ends_with_one_line(tmp_path, capsys):
    assert si.main([*TINY, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert si.main([*TINY, "--train-limit", "8", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: 8 training images are fewer than one batch of 16\n"
    assert si.main([*TINY, "--lr", "1e38", "--out", str(tmp_path / "blown")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the training loss is ") and " at step " in err[-1]
    assert err[-1].endswith("try a lower --lr (this run used 1e+38)")
    assert not (tmp_path / "blown").exists()  # no table of a run that blew up


def test_scale_invariance_defaults_yield_to_explicit_options():
    quick = si.parse_args(["--quick"])
    assert (quick.steps, quick.check_every, quick.width, quick.seeds) == (40, 20, 8, [0, 1])
    assert (quick.train_limit, quick.test_limit) == (2_000, 500)
    assert quick.out == "results/scale_invariance/mnist"
    assert si.parse_args(["--quick", "--steps", "7", "--seeds", "3"]).steps == 7
    full = si.parse_args(["--dataset", "fashion-mnist"])
    assert (full.steps, full.check_every, full.width, full.seeds) == (200, 100, 16, [0, 1, 2])
    assert (full.scales, full.batch_size, full.lr, full.probe_lr) == (
        [0.1, 0.5, 2, 10],
        64,
        0.02,
        0.5,
    )
    assert (full.test_limit, full.out) == (None, "results/scale_invariance/fashion-mnist")


@pytest.mark.skipif(
    not FashionMNIST.system_dir.is_dir(), reason="no Debian package dataset-fashion-mnist"
)
def test_scale_invariance_on_fashion_mnist(tmp_path, capsys):
    argv = [*TINY, "--dataset", "fashion-mnist", "--data-dir", str(FashionMNIST.system_dir)]
    assert si.main([*argv, "--seeds", "0", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "scale_invariance.md").read_text()
    assert "Data: Fashion-MNIST, train 300 of 60,000 images" in markdown
    assert capsys.readouterr().out.strip().endswith("effective lr η/a²: reproduced")
    mnist = read_rows(tmp_path / "scale_invariance.csv")
    assert si.main([*TINY, "--seeds", "0", "--out", str(tmp_path / "mnist")]) == 0
    assert read_rows(tmp_path / "mnist" / "scale_invariance.csv") != mnist


def test_scale_invariance_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "tinynorm.examples.scale_invariance", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m tinynorm.examples.scale_invariance" in done.stdout
    assert "--scales A [A ...]" in done.stdout


def test_scale_invariance_check_of_one_model_without_training():
    """check() on fresh weights: BN's identity at every scale, no BN's change grows with a."""
    args = si.parse_args(["--width", "4", "--scales", "0.5", "4"])
    x = tn.tensor(np.random.default_rng(0).standard_normal((8, 1, 28, 28), np.float32))
    y = tn.tensor(np.arange(8) % 10)
    tn.manual_seed(0)
    state = build_model("none", 0, 4).state_dict()
    results = si.check(args, "none", state, x, y)
    assert [(r["network"], r["scaled"], r["a"]) for r in results] == [
        ("none", c, a) for c in si.CHOICES for a in (0.5, 4)
    ]
    conv1 = {r["a"]: r["logits_change"] for r in results if r["scaled"] == "conv1"}
    assert 0.05 < conv1[0.5] < conv1[4]
    tn.manual_seed(0)
    results = si.check(args, "bn", build_model("bn", 0, 4).state_dict(), x, y)
    assert {r["network"] for r in results} == {"bn", "bn_eps"}
    assert max(deviation(r) for r in results if r["network"] == "bn") < 1e-5
