"""The learning-rate sweep of SPEC §6.5 (seeds 001-003), on tiny subsets of mnist-lite (and of
Fashion-MNIST where Debian's copy is installed), offline."""

import csv
import importlib.util
import math
import sys

import numpy as np
import pytest
from tinynorm.examples import common, lr_sweep
from tinynorm.examples.mnist import build_model

import tinynorm as tn
from tinynorm.data import MNIST, FashionMNIST

# the bundled mnist-lite as the data directory: no cached full MNIST, no download
MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "200", "--test-limit", "50"]
TINY += ["--examples", "64", "--batch-size", "16", "--width", "4"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COLUMNS = [
    "seed",
    "norm",
    "lr",
    "steps",
    "test_accuracy",
    "final_train_loss",
    "peak_train_loss",
    "diverged",
    "diverged_at_step",
    "relu_dead",
    "train_seconds",
    "examples_per_second",
]


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def typed(row: dict[str, str]) -> dict:
    """A CSV row with the types `lr_sweep` wrote it from."""
    return {
        **row,
        "seed": int(row["seed"]),
        "lr": float(row["lr"]),
        "test_accuracy": float(row["test_accuracy"]),
        "diverged": row["diverged"] == "True",
        "relu_dead": row["relu_dead"] == "True",
    }


def test_lr_sweep_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--lrs", "0.01,1e4", "--seeds", "0", "1", "--out", str(out)]
    assert lr_sweep.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_rows(out / "lr_sweep.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["seed"], r["norm"], float(r["lr"])) for r in rows] == [
        (seed, norm, lr) for seed in "01" for lr in (0.01, 1e4) for norm in ("none", "bn")
    ]
    for row in rows:
        assert 0 <= float(row["test_accuracy"]) <= 1
        if float(row["lr"]) == 0.01:  # a small step: trains all 64 // 16 steps, stays finite
            assert (row["steps"], row["diverged"], row["diverged_at_step"]) == ("4", "False", "")
            assert math.isfinite(float(row["final_train_loss"]))
        else:  # a step of 10,000 × the gradient blows up both networks
            assert row["diverged"] == "True" and row["relu_dead"] == "False"
            assert 1 <= int(row["diverged_at_step"]) <= int(row["steps"]) <= 4
            if math.isfinite(float(row["final_train_loss"])):  # blew up, finite: ran to the end
                assert int(row["steps"]) == 4
                assert float(row["peak_train_loss"]) > lr_sweep.DIVERGED_LOSS
            else:  # stopped at the non-finite loss
                assert int(row["diverged_at_step"]) == int(row["steps"])
    # the seeds differ: other weights, other batches
    first, second = ([r["final_train_loss"] for r in rows if r["seed"] == s] for s in "01")
    assert first != second

    markdown = (out / "lr_sweep.md").read_text()
    assert "| learning rate | test accuracy without BN | test accuracy with BN |" in markdown
    assert "Seeds 0, 1: mean ± std over the seeds" in markdown
    assert "Data: MNIST, train 200 of 10,000 images, test 50 of 10,000" in markdown
    accuracy = {
        (norm, lr): [float(r["test_accuracy"]) for r in rows if (r["norm"], r["lr"]) == (norm, lr)]
        for norm in ("none", "bn")
        for lr in ("0.01", "10000.0")
    }
    cells = {key: f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for key, v in accuracy.items()}
    assert f"| 0.01 | {cells['none', '0.01']} | {cells['bn', '0.01']} |" in markdown
    assert (
        f"| 10000 | {cells['none', '10000.0']} (2 of 2 diverged) | "
        f"{cells['bn', '10000.0']} (2 of 2 diverged) |"
    ) in markdown
    assert markdown.count("| none | none | 10000 | 10000 |") == 2  # per seed: 4 steps reach no 0.8

    # 4 steps at lr 0.01 are far from 0.8: no learning rate trains either network, in any seed,
    # so both sit half a decade below the grid, with no spread: a gain of 0, ruled out
    claims = lr_sweep.comparisons(lr_sweep.parse_args(argv), [typed(r) for r in rows])
    assert claims["higher learning rate"].better == [-2.5, -2.5]
    assert claims["higher learning rate"].verdict == "not reproduced"
    faster = claims["faster at lr 0.01"]
    assert faster.better == accuracy["bn", "0.01"] and faster.worse == accuracy["none", "0.01"]
    for claim in claims.values():
        assert f"| {claim.claim} | {claim.numbers()} | {claim.verdict} |" in markdown
    figure = {"lr_sweep.png"} if HAVE_MATPLOTLIB else set()
    assert {p.name for p in out.iterdir()} == {"lr_sweep.csv", "lr_sweep.md", *figure}

    assert last == (
        "largest learning rate that trains (test accuracy >= 0.8), seeds 0, 1: "
        "without BN none, none; with BN none, none; higher learning rate: not reproduced; "
        f"faster at lr 0.01: {faster.verdict}"
    )
    assert last + "." in markdown


def test_lr_sweep_verdict_measure_is_the_largest_learning_rate_that_trains():
    def rows(edge: dict[str, list[float]]) -> list[dict]:  # trains up to edge[norm][seed]
        return [
            {"seed": seed, "norm": norm, "lr": lr, "diverged": False}
            | {"test_accuracy": 0.9 if lr <= edge[norm][seed] else 0.1}
            for seed in range(3)
            for lr in lr_sweep.LRS
            for norm in ("none", "bn")
        ]

    args = lr_sweep.parse_args([])
    claims = lr_sweep.comparisons(args, rows({"none": [0.1] * 3, "bn": [0.3] * 3}))
    higher = claims["higher learning rate"]
    assert higher.gain == pytest.approx(math.log10(3)) and higher.noise == 0
    assert higher.verdict == "reproduced"
    assert claims["faster at lr 0.01"].verdict == "not reproduced"  # equal at 0.01
    mixed = lr_sweep.comparisons(args, rows({"none": [0.1, 0.1, 0.3], "bn": [0.3, 0.1, 0.1]}))
    assert mixed["higher learning rate"].verdict == "inconclusive"
    # a network that no learning rate trains counts as half a decade below the grid
    none = lr_sweep.comparisons(args, rows({"none": [0.001] * 3, "bn": [0.01] * 3}))
    assert none["higher learning rate"].worse == [-2.5] * 3
    assert none["higher learning rate"].better == [-2.0] * 3
    # Fashion-MNIST's threshold is lower: 0.75 trains there, not on MNIST
    high = [{**r, "test_accuracy": 0.75} for r in rows({"none": [0.1] * 3, "bn": [0.3] * 3})]
    fashion = lr_sweep.parse_args(["--dataset", "fashion-mnist"])
    assert lr_sweep.comparisons(fashion, high)["higher learning rate"].better == [math.log10(3)] * 3
    assert lr_sweep.comparisons(args, high)["higher learning rate"].better == [-2.5] * 3


def test_lr_sweep_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert lr_sweep.main([*TINY, "--lrs", "0.1", "--seeds", "0", "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.name for p in out.iterdir()} == {"lr_sweep.csv", "lr_sweep.md"}


def test_lr_sweep_same_seed_same_results_and_seeds_honoured(tmp_path):
    def results(seeds: list[str]) -> list[dict]:  # the CSV rows, less the timings
        out = tmp_path / "-".join(seeds)
        assert lr_sweep.main([*TINY, "--lrs", "0.1", "--seeds", *seeds, "--out", str(out)]) == 0
        rows = read_rows(out / "lr_sweep.csv")
        return [{k: v for k, v in r.items() if "second" not in k} for r in rows]

    alone = results(["2"])
    assert [r["seed"] for r in alone] == ["2", "2"]
    assert results(["2"]) == alone
    assert [r for r in results(["0", "2"]) if r["seed"] == "2"] == alone


@pytest.mark.skipif(
    not FashionMNIST.system_dir.is_dir(), reason="no Debian package dataset-fashion-mnist"
)
def test_lr_sweep_on_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--dataset", "fashion-mnist", "--data-dir", str(FashionMNIST.system_dir)]
    assert lr_sweep.main([*argv, "--lrs", "0.1", "--seeds", "0", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    markdown = (out / "lr_sweep.md").read_text()
    assert "Data: Fashion-MNIST, train 200 of 60,000 images, test 50 of 10,000" in markdown
    assert "Trains: a test accuracy of at least 0.7." in markdown
    assert last.startswith("largest learning rate that trains (test accuracy >= 0.7), seeds 0:")


@pytest.mark.parametrize("bad", ["0.1,abc", "0,1", "0.1,-1", "", "1,,2", "nan", "inf"])
def test_lr_sweep_bad_learning_rates_are_refused_clearly(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lr_sweep.parse_args(["--lrs", bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --lrs" in err
    assert "is not a comma-separated list of positive numbers, e.g. 0.01,0.1,1" in err


def test_lr_sweep_bad_options_and_data_end_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lr_sweep.parse_args(["--examples", "10"])
    assert exit_info.value.code == 2
    assert "--examples must be at least --batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lr_sweep.parse_args(["--batch-size", "1"])
    assert "--batch-size must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lr_sweep.parse_args(["--seeds"])
    assert "argument --seeds: expected at least one argument" in capsys.readouterr().err
    assert lr_sweep.main([*TINY, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1


def test_lr_sweep_quick_defaults_yield_to_explicit_options():
    quick = lr_sweep.parse_args(["--quick"])
    assert (quick.examples, quick.width, quick.test_limit) == (2_000, 8, 1_000)
    assert (quick.lrs, quick.batch_size, quick.momentum) == (list(lr_sweep.LRS), 64, 0.0)
    assert (quick.seeds, quick.more_seeds) == ([0, 1], ())
    explicit = lr_sweep.parse_args(["--quick", "--examples", "640", "--lrs", "0.5,2"])
    assert (explicit.examples, explicit.lrs) == (640, [0.5, 2.0])
    full = lr_sweep.parse_args([])
    assert (full.examples, full.width, full.test_limit, full.out) == (
        10_000,
        16,
        None,
        "results/lr_sweep/mnist",
    )
    assert (full.lrs, full.seeds, full.more_seeds) == (
        [0.01, 0.03, 0.1, 0.3, 1, 3],
        [0, 1, 2],
        (3, 4),
    )


def test_divergence_step_is_the_first_non_finite_loss_or_the_first_above_the_limit():
    high = lr_sweep.DIVERGED_LOSS + 1
    assert lr_sweep.divergence_step([2.3, 1.9, math.nan]) == 3
    assert lr_sweep.divergence_step([2.3, math.inf]) == 2
    assert lr_sweep.divergence_step([2.3, high, 1.0]) is None  # a spike it recovered from
    assert lr_sweep.divergence_step([2.3, high, 2.0, high]) == 2  # ended above the limit
    assert lr_sweep.divergence_step([2.3, 2.3, 2.3]) is None  # stuck at chance: not diverged


def test_watch_relus_sees_a_layer_that_is_off_for_the_whole_batch():
    images = tn.tensor(MNIST(root=MNIST_LITE, train=False).normalized()[:8])
    model = build_model("bn", 1, width=2)
    alive = lr_sweep.watch_relus(model)
    model(images)
    assert alive == {2: True, 6: True}
    model[5].bias.data[...] = -1e6  # the second BN's shift: every input of its ReLU negative
    model.eval()
    model(images)
    assert alive == {2: True, 6: True}  # eval-mode passes are not watched
    model.train()
    model(images)
    assert alive == {2: True, 6: False}
