"""The experiments of SPEC §6, each on a tiny subset of the bundled mnist-lite, offline."""

import csv
import importlib.util
import sys

import numpy as np
import pytest
from tinynorm.examples import bn_figure1

# Offline and the same data on every machine: the bundled mnist-lite, named as the data
# directory, so that neither a cached full MNIST nor a download is ever used.
MNIST_LITE = str(bn_figure1.MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "600", "--test-limit", "200"]
TINY += ["--steps", "60", "--eval-every", "20"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def read_csv(path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_bn_figure1_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert bn_figure1.main([*TINY, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()

    rows = read_csv(out / "bn_figure1.csv")
    nets = ("without_bn", "with_bn")
    assert list(rows[0]) == [
        "step",
        *(f"test_accuracy_{k}" for k in nets),
        *(f"{k}_p{q}" for k in nets for q in (15, 50, 85)),
    ]
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    for row in rows:
        for k in nets:
            assert 0 <= row[f"test_accuracy_{k}"] <= 1
            assert row[f"{k}_p15"] <= row[f"{k}_p50"] <= row[f"{k}_p85"]
    # identical initial weights: the same accuracy before training
    assert rows[0]["test_accuracy_without_bn"] == rows[0]["test_accuracy_with_bn"]
    # with BN, the traced sigmoid input is normalized over the batch: median near 0
    assert abs(rows[0]["with_bn_p50"]) < 0.5 < rows[0]["with_bn_p85"]

    markdown = (out / "bn_figure1.md").read_text()
    assert "| | without BN | with BN |" in markdown
    assert "| final test accuracy |" in markdown
    figure = {"bn_figure1.png"} if HAVE_MATPLOTLIB else set()
    written = {p.name for p in out.iterdir()}  # no temporary file left behind
    assert written == {"bn_figure1.csv", "bn_figure1.md", *figure}

    final = rows[-1]
    assert lines[-1] == (
        f"final test accuracy: without BN {final['test_accuracy_without_bn']:.4f}, "
        f"with BN {final['test_accuracy_with_bn']:.4f}"
    )


def test_bn_figure1_without_matplotlib_says_so_and_writes_csv_and_markdown(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert bn_figure1.main([*TINY, "--steps", "20", "--out", str(out)]) == 0
    assert bn_figure1.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert (out / "bn_figure1.csv").exists() and (out / "bn_figure1.md").exists()
    assert not (out / "bn_figure1.png").exists()


def test_bn_figure1_same_seed_same_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert bn_figure1.main([*TINY, "--steps", "20", "--out", str(out)]) == 0
    assert (a / "bn_figure1.csv").read_text() == (b / "bn_figure1.csv").read_text()


def test_bn_figure1_quick_defaults_yield_to_explicit_options():
    quick = bn_figure1.parse_args(["--quick"])
    assert (quick.steps, quick.eval_every, quick.test_limit) == (2000, 100, 2000)
    assert bn_figure1.parse_args(["--quick", "--steps", "7"]).steps == 7
    full = bn_figure1.parse_args([])
    assert (full.steps, full.batch_size, full.train_limit) == (50_000, 60, None)


def test_bn_figure1_same_initial_weights_with_and_without_bn():
    weights = bn_figure1.gaussian_weights(0.01, seed=3)
    plain, normed = bn_figure1.build_mlp(weights, False), bn_figure1.build_mlp(weights, True)
    linears = [
        [m.weight.numpy() for m in model if isinstance(m, bn_figure1.nn.Linear)]
        for model in (plain, normed)
    ]
    assert [w.shape for w in linears[0]] == [(100, 784), (100, 100), (100, 100), (10, 100)]
    for w_plain, w_bn in zip(*linears):
        np.testing.assert_array_equal(w_plain, w_bn)
    assert abs(np.std(linears[0][0]) - 0.01) < 1e-3


def test_bn_figure1_bad_input_ends_with_one_line_and_nonzero_exit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bn_figure1.main(["--steps", "0"])
    assert exit_info.value.code != 0
    assert "--steps and --eval-every must be >= 1" in capsys.readouterr().err
    assert bn_figure1.main([*TINY, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert bn_figure1.main([*TINY, "--train-limit", "30", "--out", str(tmp_path)]) == 1
    assert "fewer than one batch" in capsys.readouterr().err
