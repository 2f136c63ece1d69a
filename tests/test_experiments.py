"""The experiments of SPEC §6, each on a tiny subset of the bundled mnist-lite, offline."""

import csv
import ctypes
import importlib.util
import signal
import sys

import numpy as np
import pytest
from tinynorm.examples import bn_figure1, brn_noniid, common

from tinynorm.data import MNIST

# Offline and the same data on every machine: the bundled mnist-lite, named as the data
# directory, so that neither a cached full MNIST nor a download is ever used.
MNIST_LITE = str(MNIST.bundled_dir)
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
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
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


# ---- batch renormalization (seed 000): small batches and non-i.i.d. batches --------------------
TINY_DATA = ["--data-dir", MNIST_LITE, "--train-limit", "400", "--test-limit", "200"]
TINY_NONIID = [*TINY_DATA, "--steps", "20", "--eval-every", "10", "--width", "4"]
TINY_NONIID += ["--batch-size", "16"]


def written_files(out) -> set[str]:
    return {p.name for p in out.iterdir()}


def test_brn_noniid_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert brn_noniid.main([*TINY_NONIID, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_csv(out / "brn_noniid.csv")
    models = ("bn", "brn", "bn_iid")
    assert list(rows[0]) == ["step", *(f"test_accuracy_{k}" for k in models)]
    assert [r["step"] for r in rows] == [0, 10, 20]
    for row in rows:
        assert all(0 <= row[f"test_accuracy_{k}"] <= 1 for k in models)
    # the same initial weights, and BN and BRN agree before training (eval with μ = 0, σ = 1)
    assert len({rows[0][f"test_accuracy_{k}"] for k in models}) == 1

    markdown = (out / "brn_noniid.md").read_text()
    assert "| model | batches | final test accuracy | best test accuracy |" in markdown
    assert "| BRN | 2 per batch |" in markdown and "| BN | i.i.d. |" in markdown
    figure = {"brn_noniid.png"} if HAVE_MATPLOTLIB else set()
    assert written_files(out) == {"brn_noniid.csv", "brn_noniid.md", *figure}

    final = rows[-1]
    assert last == (
        "final test accuracy (inference statistics), 2 classes per batch: "
        f"BN {final['test_accuracy_bn']:.4f}, BRN {final['test_accuracy_brn']:.4f}; "
        f"BN on i.i.d. batches {final['test_accuracy_bn_iid']:.4f}"
    )


@pytest.mark.parametrize(
    ("module", "argv"),
    [(brn_noniid, [*TINY_NONIID, "--steps", "10"])],
)
def test_brn_experiments_without_matplotlib_say_so(module, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert module.main([*argv, "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.suffix for p in out.iterdir()} == {".csv", ".md"}


def test_brn_experiments_quick_defaults_yield_to_explicit_options():
    quick = brn_noniid.parse_args(["--quick"])
    assert (quick.steps, quick.classes_per_batch, quick.out) == (600, 2, "results/brn_noniid")
    assert brn_noniid.parse_args(["--quick", "--classes-per-batch", "1"]).classes_per_batch == 1
    assert brn_noniid.parse_args([]).test_limit is None


@pytest.mark.parametrize("experiment", [bn_figure1, brn_noniid], ids=lambda m: m.__name__)
def test_a_non_finite_loss_stops_the_experiment_with_a_clear_error(experiment, tmp_path, capsys):
    out = tmp_path / "out"
    assert experiment.main([*TINY, "--lr", "1e38", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the training loss is ") and " at step " in err
    assert err.endswith("try a lower --lr (this run used 1e+38)")
    assert not out.exists()  # no table of a run that blew up


def test_ctrl_c_anywhere_is_a_clean_interrupt(capsys):
    """KeyboardInterrupt, also wrapped in the SystemError a Numba call turns it into."""

    def run(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise SystemError("returned a result with an exception set") from err

    assert common.run_experiment([], lambda argv: None, run, None) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_ctrl_c_that_python_drops_in_a_callback_still_interrupts(capsys):
    """A SIGINT that lands in a callback from C (llvmlite's, while Numba compiles) is printed
    as "unraisable" and dropped by Python; the next step's check_interrupt raises it."""
    callback = ctypes.CFUNCTYPE(None)(lambda: signal.raise_signal(signal.SIGINT))

    def run(args):
        callback()
        assert sys.unraisablehook is not sys.__unraisablehook__  # the interrupt went by
        common.check_interrupt()
        return "went on as if nothing happened"

    assert common.run_experiment([], lambda argv: None, run, lambda a, r: r) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
