"""The learning-rate sweep of SPEC §6.5 (seeds 001-003), on a tiny subset of mnist-lite, offline."""

import csv
import importlib.util
import math
import sys

import pytest
from tinynorm.examples import common, lr_sweep
from tinynorm.examples.mnist import build_model

import tinynorm as tn
from tinynorm.data import MNIST

# the bundled mnist-lite as the data directory: no cached full MNIST, no download
MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "200", "--test-limit", "50"]
TINY += ["--examples", "64", "--batch-size", "16", "--width", "4"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COLUMNS = [
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


def test_lr_sweep_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert lr_sweep.main([*TINY, "--lrs", "0.01,1e4", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_rows(out / "lr_sweep.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["norm"], float(r["lr"])) for r in rows] == [
        ("none", 0.01),
        ("bn", 0.01),
        ("none", 1e4),
        ("bn", 1e4),
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

    markdown = (out / "lr_sweep.md").read_text()
    assert "| learning rate | test accuracy without BN | test accuracy with BN |" in markdown
    assert "| 0.01 | 0." in markdown
    assert markdown.count("diverged at step") == 2
    figure = {"lr_sweep.png"} if HAVE_MATPLOTLIB else set()
    assert {p.name for p in out.iterdir()} == {"lr_sweep.csv", "lr_sweep.md", *figure}

    def trained(norm: str) -> str:  # 4 steps at lr 0.01 are far from 0.8, but read it anyway
        accuracy = [float(r["test_accuracy"]) for r in rows if r["norm"] == norm]
        return "0.01" if accuracy[0] >= 0.8 else "none"

    assert last == (
        "largest learning rate that trains (test accuracy >= 0.8): "
        f"without BN {trained('none')}, with BN {trained('bn')}; "
        "smallest that diverges: without BN 10000, with BN 10000"
    )
    assert last + "." in markdown


def test_lr_sweep_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert lr_sweep.main([*TINY, "--lrs", "0.1", "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.name for p in out.iterdir()} == {"lr_sweep.csv", "lr_sweep.md"}


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
    assert lr_sweep.main([*TINY, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1


def test_lr_sweep_quick_defaults_yield_to_explicit_options():
    quick = lr_sweep.parse_args(["--quick"])
    assert (quick.examples, quick.width, quick.test_limit) == (2_000, 8, 1_000)
    assert (quick.lrs, quick.batch_size, quick.momentum) == (list(lr_sweep.LRS), 64, 0.0)
    explicit = lr_sweep.parse_args(["--quick", "--examples", "640", "--lrs", "0.5,2"])
    assert (explicit.examples, explicit.lrs) == (640, [0.5, 2.0])
    full = lr_sweep.parse_args([])
    assert (full.examples, full.width, full.test_limit, full.out) == (
        10_000,
        16,
        None,
        "results/lr_sweep",
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
