"""examples/small_batch and examples/norm_variants on a tiny subset of the bundled mnist-lite:
equal updates at every batch size, rows per seed, mean ± std, verdicts, clean errors."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from tinynorm.examples import common, mnist, norm_variants, small_batch

from tinynorm.data import MNIST, FashionMNIST

MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "64", "--test-limit", "50", "--steps", "6"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
FASHION = Path(FashionMNIST.system_dir)


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_small_batch_equal_updates_rows_per_seed_and_verdicts(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--norms", "bn,brn,gn", "--batch-sizes", "2,8", "--seeds", "3", "5"]
    assert small_batch.main([*argv, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = read_rows(out / "small_batch.csv")
    assert [(int(r["seed"]), r["norm"], int(r["batch_size"])) for r in rows] == [
        (s, n, b) for s in (3, 5) for b in (2, 8) for n in ("bn", "brn", "gn")
    ]
    for row in rows:
        batch = int(row["batch_size"])
        assert int(row["steps"]) == 6  # the same number of updates at every batch size
        assert float(row["lr"]) == pytest.approx(0.1 * batch / 64)  # fc's lr, linearly scaled
        assert int(row["values_per_statistic"]) == batch  # BatchNorm1d pools N values
        assert 0 <= float(row["test_accuracy"]) <= 1 and row["diverged"] == "0"
    markdown = (out / "small_batch.md").read_text()
    bn2 = [float(r["test_accuracy"]) for r in rows if (r["norm"], r["batch_size"]) == ("bn", "2")]
    assert f"| bn | {np.mean(bn2):.4f} ± {np.std(bn2, ddof=1):.4f} |" in markdown
    assert "seeds 3, 5" in markdown and "2 seeds |" in markdown
    for claim in ("BRN beats BN at batch 2", "BN loses more than GN from batch 8 to 2"):
        assert claim in markdown and claim in last
    assert "BRN beats BN at batch 4" not in markdown  # batch 4 was not run
    figure = {"small_batch.png"} if HAVE_MATPLOTLIB else set()
    assert {p.name for p in out.iterdir()} == {"small_batch.csv", "small_batch.md", *figure}


def test_small_batch_small_maps_design_and_same_seed_same_results(tmp_path):
    argv = [*TINY, "--design", "small-maps", "--width", "2", "--norms", "bn", "--seeds", "1"]
    runs = []
    for name in ("a", "b"):
        assert small_batch.main([*argv, "--batch-sizes", "4", "--out", str(tmp_path / name)]) == 0
        runs.append(read_rows(tmp_path / name / "small_batch.csv"))
    assert runs[0][0]["values_per_statistic"] == str(4 * 9)  # the 3 × 3 map's
    same = ("test_accuracy_quarter", "test_accuracy", "final_train_loss")
    assert [r[k] for k in same for r in runs[0]] == [r[k] for k in same for r in runs[1]]


def test_defaults_per_design_and_more_seeds_only_by_default():
    fc = small_batch.parse_args([])
    assert (fc.design, fc.steps, fc.batch_sizes, fc.lr) == ("fc", 1500, [2, 4, 8, 32, 128], 0.1)
    assert fc.seeds == [0, 1, 2] and fc.more_seeds == (3, 4)
    assert fc.out == "results/small_batch/mnist" and fc.dataset == "mnist"
    maps = small_batch.parse_args(["--design", "small-maps", "--steps", "9"])
    assert (maps.steps, maps.batch_sizes, maps.width) == (9, [2, 4, 16], 8)
    assert small_batch.parse_args(["--seeds", "0", "1", "2"]).more_seeds == ()
    assert small_batch.parse_args(["--quick"]).more_seeds == ()
    fashion = small_batch.parse_args(["--dataset", "fashion-mnist"])
    assert fashion.out == "results/small_batch/fashion-mnist"
    assert norm_variants.parse_args([]).norms == list(mnist.NORMS)


@pytest.mark.parametrize(
    ("program", "argv", "message"),
    [
        (small_batch, ["--norms", "bn,in"], "--norms: in not available for --design fc"),
        (small_batch, ["--batch-sizes", "2,0"], "argument --batch-sizes: must be at least 1"),
        (small_batch, ["--lr", "0"], "--lr must be > 0"),
        (norm_variants, ["--norms", "bn,xn"], "--norms: xn not available for --design small-maps"),
        (norm_variants, ["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(program, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        program.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_too_few_training_images_is_one_line_and_exit_1(tmp_path, capsys):
    argv = [*TINY, "--batch-sizes", "2,128", "--out", str(tmp_path / "out")]
    assert small_batch.main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        "error: 64 training images are fewer than one batch of 128"
    )
    assert not (tmp_path / "out").exists()


def test_norm_variants_verdicts_curves_and_table(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*TINY, "--width", "2", "--norms", "bn,in,bin,wn,bln,ln", "--seeds", "0", "1"]
    assert norm_variants.main([*argv, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = read_rows(out / "norm_variants.csv")
    assert [(r["seed"], r["norm"]) for r in rows] == [
        (s, n) for s in "01" for n in ("bn", "in", "bin", "wn", "bln", "ln")
    ]
    curves = read_rows(out / "norm_variants_curves.csv")
    assert len(curves) == len(rows) * 6  # 6 steps: a window each
    assert [int(c["step"]) for c in curves[:6]] == [1, 2, 3, 4, 5, 6]
    markdown = (out / "norm_variants.md").read_text()
    for claim in (
        "WN + mean-only BN beats BN (batch 16)",
        "BLN converges faster than BN: accuracy at 1/4 of the steps (batch 16)",
        "BLN converges faster than LN",
    ):
        assert claim in markdown and claim in last
    assert "BIN beats its best component, " in markdown
    assert "SN beats" not in markdown  # switchable norm was not run
    assert any(w in last for w in ("(reproduced)", "(not reproduced)", "(inconclusive)"))


def test_without_matplotlib_says_so_and_writes_csv_and_markdown(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    argv = [*TINY, "--norms", "bn", "--batch-sizes", "2", "--seeds", "0"]
    assert small_batch.main([*argv, "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.suffix for p in out.iterdir()} == {".csv", ".md"}


@pytest.mark.skipif(not FASHION.is_dir(), reason="no Fashion-MNIST (dataset-fashion-mnist)")
def test_fashion_mnist_runs_and_says_so(tmp_path, capsys):
    argv = ["--dataset", "fashion-mnist", "--offline", "--train-limit", "64"]
    argv += ["--test-limit", "50", "--steps", "4", "--norms", "gn", "--batch-sizes", "4"]
    assert small_batch.main([*argv, "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert "Data: Fashion-MNIST, train 64 of 60,000" in (tmp_path / "small_batch.md").read_text()
