"""The variants side by side (SPEC §6.4, seed 004) on a tiny subset of the bundled mnist-lite."""

import csv
import importlib.util
import sys

import numpy as np
import pytest
from tinynorm.examples import common, mnist, norm_variants

from tinynorm.data import MNIST

# Offline and the same data on every machine: the bundled mnist-lite as the data directory.
MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "32", "--test-limit", "50", "--width", "4"]
TINY += ["--norms", "bn,gn", "--batch-sizes", "2,8"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
COLUMNS = [
    "norm",
    "batch_size",
    "steps",
    "lr",
    "test_accuracy",
    "final_train_loss",
    "train_seconds_per_epoch",
    "examples_per_second",
    "diverged",
]


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert norm_variants.main([*TINY, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_rows(out / "norm_variants.csv")
    assert list(rows[0]) == COLUMNS
    assert [(r["norm"], int(r["batch_size"])) for r in rows] == [
        ("bn", 2),
        ("gn", 2),
        ("bn", 8),
        ("gn", 8),
    ]
    for row in rows:
        batch = int(row["batch_size"])
        assert int(row["steps"]) == 32 // batch  # one epoch of full batches
        assert float(row["lr"]) == pytest.approx(0.02 * batch / 64)
        assert 0 <= float(row["test_accuracy"]) <= 1
        assert np.isfinite(float(row["final_train_loss"]))
        assert row["diverged"] == "0"
        seconds, rate = float(row["train_seconds_per_epoch"]), float(row["examples_per_second"])
        assert seconds > 0 and rate > 0
        # one epoch: the seconds per epoch are the seconds of the 32 examples trained
        assert 32 / rate == pytest.approx(seconds, rel=0.05, abs=2e-3)

    markdown = (out / "norm_variants.md").read_text()
    assert "| test accuracy | batch 2 | batch 8 | spread (max − min) |" in markdown
    assert "| seconds per epoch | batch 2 | batch 8 |" in markdown
    accuracy = {(r["norm"], r["batch_size"]): float(r["test_accuracy"]) for r in rows}
    for norm in ("bn", "gn"):
        spread = abs(accuracy[norm, "2"] - accuracy[norm, "8"])
        assert (
            f"\n| {norm} | {accuracy[norm, '2']:.4f} | {accuracy[norm, '8']:.4f} | {spread:.4f} |"
        ) in markdown
    assert "(diverged)" not in markdown
    figure = {"norm_variants.png"} if HAVE_MATPLOTLIB else set()
    written = {p.name for p in out.iterdir()}  # no temporary file left behind
    assert written == {"norm_variants.csv", "norm_variants.md", *figure}

    assert last == (
        "test accuracy (inference statistics) at batch 2 / 8: "
        f"bn {accuracy['bn', '2']:.4f} / {accuracy['bn', '8']:.4f}, "
        f"gn {accuracy['gn', '2']:.4f} / {accuracy['gn', '8']:.4f}"
    )


def test_same_seed_same_results_and_epochs_multiply_the_steps(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        argv = [*TINY, "--norms", "ln", "--batch-sizes", "8", "--epochs", "2"]
        assert norm_variants.main([*argv, "--out", str(out)]) == 0
    first, second = read_rows(a / "norm_variants.csv"), read_rows(b / "norm_variants.csv")
    assert int(first[0]["steps"]) == 2 * (32 // 8)
    same = ("norm", "batch_size", "steps", "lr", "test_accuracy", "final_train_loss")
    assert [{k: r[k] for k in same} for r in first] == [{k: r[k] for k in same} for r in second]


def test_a_diverging_run_is_flagged_and_the_others_carry_on(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--norms", "none,gn", "--batch-sizes", "8", "--lr", "1e37"]
    with np.errstate(all="ignore"):
        assert norm_variants.main([*argv, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = read_rows(out / "norm_variants.csv")
    assert [r["norm"] for r in rows] == ["none", "gn"]
    for row in rows:
        assert row["diverged"] == "1"
        assert 1 <= int(row["steps"]) < 32 // 8  # stopped at the first non-finite loss
        assert not np.isfinite(float(row["final_train_loss"]))
        assert 0 <= float(row["test_accuracy"]) <= 1
    assert "(diverged) |" in (out / "norm_variants.md").read_text()
    assert last.startswith("test accuracy (inference statistics) at batch 8: none ")


def test_without_matplotlib_says_so_and_writes_csv_and_markdown(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    argv = [*TINY, "--norms", "bn", "--batch-sizes", "8"]
    assert norm_variants.main([*argv, "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.name for p in out.iterdir()} == {"norm_variants.csv", "norm_variants.md"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--norms", "bn,xn"], "argument --norms: unknown norm 'xn' (choose from none, bn, "),
        (["--norms", "bn,"], "argument --norms: unknown norm '' "),
        (["--batch-sizes", "2,0"], "argument --batch-sizes: '0' is not a positive integer"),
        (["--batch-sizes", "2,x"], "argument --batch-sizes: 'x' is not a positive integer"),
        (["--batch-sizes", "-4"], "argument --batch-sizes: '-4' is not a positive integer"),
        (["--epochs", "0"], "--epochs and --width must be >= 1 and --lr > 0"),
    ],
)
def test_bad_options_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        norm_variants.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_too_few_training_images_for_a_batch_is_one_line_and_exit_1(tmp_path, capsys):
    argv = [*TINY, "--batch-sizes", "2,64", "--out", str(tmp_path)]
    assert norm_variants.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: 32 training images are fewer than one batch of 64"


def test_defaults_and_quick_defaults_yield_to_explicit_options():
    full = norm_variants.parse_args([])
    assert full.norms == list(mnist.NORMS) and full.batch_sizes == [2, 8, 32, 128]
    assert (full.epochs, full.width, full.lr, full.out) == (1, 16, 0.02, "results/norm_variants")
    assert full.train_limit is None and full.test_limit is None
    quick = norm_variants.parse_args(["--quick"])
    assert (quick.width, quick.train_limit, quick.test_limit) == (8, 512, 500)
    assert quick.norms == list(mnist.NORMS)  # quick still runs every norm
    assert norm_variants.parse_args(["--quick", "--width", "3"]).width == 3
    lists = norm_variants.parse_args(["--norms", "gn, bn,gn", "--batch-sizes", "32,2,32"])
    assert (lists.norms, lists.batch_sizes) == (["gn", "bn"], [2, 32])
