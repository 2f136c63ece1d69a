"""The experiments of SPEC §6, each on a tiny subset of the bundled mnist-lite, offline."""

import csv
import ctypes
import importlib.util
import re
import signal
import sys

import numpy as np
import pytest
from tinynorm.examples import bn_figure1, brn_noniid, common
from tinynorm.examples.verdicts import Comparison, mean_std, verdict_table

from tinynorm.data import MNIST, FashionMNIST

# Offline and the same data on every machine: the bundled mnist-lite, named as the data
# directory, so that neither a cached full MNIST nor a download is ever used.
MNIST_LITE = str(MNIST.bundled_dir)
TINY = ["--data-dir", MNIST_LITE, "--train-limit", "600", "--test-limit", "200"]
TINY += ["--steps", "60", "--eval-every", "20"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def read_csv(path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


BN_TINY = [*TINY, "--seeds", "0", "1"]  # two seeds: no more are added
NETS = ("without_bn", "with_bn")


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bn_figure1_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert bn_figure1.main([*BN_TINY, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()

    curves = read_csv(out / "bn_figure1_curves.csv")
    assert list(curves[0]) == [
        "seed",
        "step",
        *(f"test_accuracy_{k}" for k in NETS),
        *(f"{k}_p{q}" for k in NETS for q in (15, 50, 85)),
    ]
    assert [(r["seed"], r["step"]) for r in curves] == [
        (seed, step) for seed in (0, 1) for step in (0, 20, 40, 60)
    ]
    for row in curves:
        for k in NETS:
            assert 0 <= row[f"test_accuracy_{k}"] <= 1
            assert row[f"{k}_p15"] <= row[f"{k}_p50"] <= row[f"{k}_p85"]
        if row["step"] == 0:  # identical initial weights: the same accuracy before training
            assert row["test_accuracy_without_bn"] == row["test_accuracy_with_bn"]
            # with BN, the traced sigmoid input is normalized over the batch: median near 0
            assert abs(row["with_bn_p50"]) < 0.5 < row["with_bn_p85"]
    # the seeds differ: other weights, other batches
    assert curves[1]["test_accuracy_with_bn"] != curves[5]["test_accuracy_with_bn"]

    rows = read_rows(out / "bn_figure1.csv")
    assert [(r["seed"], r["network"]) for r in rows] == [(s, k) for s in "01" for k in NETS]
    for row in rows:
        mine = [c for c in curves if c["seed"] == int(row["seed"])]
        accuracy = [c[f"test_accuracy_{row['network']}"] for c in mine]
        median = [c[f"{row['network']}_p50"] for c in mine]
        assert row["early_step"] == "20"  # the first evaluation at or after a tenth of 60
        assert float(row["test_accuracy_early"]) == accuracy[1]
        assert float(row["test_accuracy_final"]) == accuracy[-1]
        assert float(row["test_accuracy_best"]) == max(accuracy)
        assert float(row["p50_range"]) == pytest.approx(max(median) - min(median), abs=1e-5)

    markdown = (out / "bn_figure1.md").read_text()
    assert "| | without BN | with BN |" in markdown
    assert "Seeds 0, 1: mean ± std over the seeds" in markdown
    assert "Data: MNIST, train 600 of 10,000 images, test 200 of 10,000" in markdown
    final = {k: [float(r["test_accuracy_final"]) for r in rows if r["network"] == k] for k in NETS}
    spread = {k: f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for k, v in final.items()}
    assert f"| final test accuracy | {spread['without_bn']} | {spread['with_bn']} |" in markdown
    verdicts = re.findall(r"\| (BN [^|]*) \| ([^|]*) \| (\w[\w ]*) \|\n", markdown)
    assert [claim.split(":")[0] for claim, _, _ in verdicts] == [
        "BN trains faster",
        "BN reaches a higher final accuracy",
        "BN keeps the input distribution stable",
        "BN keeps the input distribution stable",
    ]
    assert all(word in ("reproduced", "not reproduced", "inconclusive") for *_, word in verdicts)
    figure = {"bn_figure1.png"} if HAVE_MATPLOTLIB else set()
    written = {p.name for p in out.iterdir()}  # no temporary file left behind
    assert written == {"bn_figure1.csv", "bn_figure1_curves.csv", "bn_figure1.md", *figure}

    names = ("faster", "higher final accuracy", "stable median", "stable 15th percentile")
    assert lines[-1] == (
        f"final test accuracy (mean ± std over 2 seeds): without BN {spread['without_bn']}, "
        f"with BN {spread['with_bn']}; "
        + ", ".join(f"{name}: {word}" for name, (*_, word) in zip(names, verdicts))
    )


def test_bn_figure1_comparisons_follow_the_rule():
    def rows(early: list[float], p50_without: list[float]) -> list[dict]:
        return [
            {
                "seed": seed,
                "network": net,
                "early_step": 100,
                "test_accuracy_early": early[seed] + (0.1 if net == "with_bn" else 0),
                "test_accuracy_final": 0.9,
                "p50_range": p50_without[seed] if net == "without_bn" else 0.1,
                "p15_range": 0.3,
            }
            for seed in range(3)
            for net in NETS
        ]

    claims = bn_figure1.comparisons(rows([0.5, 0.52, 0.54], [3.0, 2.9, 3.1]))
    assert list(claims) == [
        "faster",
        "higher final accuracy",
        "stable median",
        "stable 15th percentile",
    ]
    assert claims["faster"].claim == "BN trains faster: test accuracy at step 100"
    assert claims["faster"].gain == pytest.approx(0.1)
    assert claims["faster"].verdict == "reproduced"  # +0.1, each side's std 0.02
    assert claims["higher final accuracy"].verdict == "not reproduced"  # equal, no spread
    assert claims["stable median"].names == ("without BN", "with BN")
    assert claims["stable median"].gain == pytest.approx(2.9)  # the larger drift is without BN
    assert claims["stable median"].verdict == "reproduced"
    assert claims["stable 15th percentile"].verdict == "not reproduced"  # 0 < the effect 0.5
    wide = bn_figure1.comparisons(rows([0.2, 0.5, 0.8], [3.0, 2.9, 3.1]))["faster"]
    assert (wide.verdict, wide.needs_more_seeds) == ("inconclusive", True)  # +0.1, std 0.3


def test_bn_figure1_without_matplotlib_says_so_and_writes_csv_and_markdown(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "out"
    assert bn_figure1.main([*BN_TINY, "--steps", "20", "--out", str(out)]) == 0
    assert common.NO_MATPLOTLIB in capsys.readouterr().out.splitlines()
    assert {p.name for p in out.iterdir()} == {
        "bn_figure1.csv",
        "bn_figure1_curves.csv",
        "bn_figure1.md",
    }


def test_bn_figure1_same_seed_same_results_and_seeds_honoured(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seeds in ((a, ["1"]), (b, ["1"]), (c, ["0", "1"])):
        argv = [*TINY, "--steps", "20", "--seeds", *seeds, "--out", str(out)]
        assert bn_figure1.main(argv) == 0
    for name in ("bn_figure1.csv", "bn_figure1_curves.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    assert {r["seed"] for r in read_rows(a / "bn_figure1.csv")} == {"1"}
    # seed 1 gives the same numbers alone as after seed 0
    both = [r for r in read_rows(c / "bn_figure1.csv") if r["seed"] == "1"]
    assert both == read_rows(a / "bn_figure1.csv")


def test_bn_figure1_quick_defaults_yield_to_explicit_options():
    quick = bn_figure1.parse_args(["--quick"])
    assert (quick.steps, quick.eval_every, quick.test_limit) == (1000, 100, 2000)
    assert (quick.seeds, quick.more_seeds) == ([0, 1], ())
    assert bn_figure1.parse_args(["--quick", "--steps", "7"]).steps == 7
    assert bn_figure1.parse_args(["--quick", "--seeds", "5"]).seeds == [5]
    full = bn_figure1.parse_args([])
    assert (full.steps, full.batch_size, full.train_limit) == (25_000, 60, None)
    assert (full.seeds, full.more_seeds, full.out) == (
        [0, 1, 2],
        (3, 4),
        "results/bn_figure1/mnist",
    )
    fashion = bn_figure1.parse_args(["--dataset", "fashion-mnist", "--seeds", "0", "1", "2"])
    assert (fashion.more_seeds, fashion.out) == ((), "results/bn_figure1/fashion-mnist")


@pytest.mark.skipif(
    not FashionMNIST.system_dir.is_dir(), reason="no Debian package dataset-fashion-mnist"
)
def test_bn_figure1_on_fashion_mnist(tmp_path):
    out = tmp_path / "out"
    argv = ["--dataset", "fashion-mnist", "--data-dir", str(FashionMNIST.system_dir)]
    argv += ["--train-limit", "600", "--test-limit", "200", "--steps", "20", "--seeds", "0"]
    assert bn_figure1.main([*argv, "--eval-every", "10", "--out", str(out)]) == 0
    markdown = (out / "bn_figure1.md").read_text()
    assert "Data: Fashion-MNIST, train 600 of 60,000 images, test 200 of 10,000" in markdown
    mnist = tmp_path / "mnist"
    assert bn_figure1.main([*TINY, "--steps", "20", "--seeds", "0", "--out", str(mnist)]) == 0
    assert read_rows(out / "bn_figure1.csv") != read_rows(mnist / "bn_figure1.csv")


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
    with pytest.raises(SystemExit) as exit_info:
        bn_figure1.main(["--seeds", "one"])
    assert exit_info.value.code == 2
    assert "argument --seeds: invalid int value: 'one'" in capsys.readouterr().err
    assert bn_figure1.main([*BN_TINY, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert bn_figure1.main([*BN_TINY, "--train-limit", "30", "--out", str(tmp_path)]) == 1
    assert "fewer than one batch" in capsys.readouterr().err


# ---- batch renormalization with non-i.i.d. batches (seed 000) ---------------------------------
TINY_DATA = ["--data-dir", MNIST_LITE, "--train-limit", "400", "--test-limit", "200"]
TINY_NONIID = [*TINY_DATA, "--steps", "20", "--eval-every", "10", "--width", "4"]
TINY_NONIID += ["--batch-size", "16", "--seeds", "0", "1"]  # explicit seeds: none are added
MODELS = ("bn", "brn", "bn_iid")


def written_files(out) -> set[str]:
    return {p.name for p in out.iterdir()}


def noniid_final(rows: list[dict], step: int = 20) -> dict[str, list[float]]:
    """Each model's final test accuracies, one per seed, from the CSV rows."""
    return {k: [r[f"test_accuracy_{k}"] for r in rows if r["step"] == step] for k in MODELS}


def test_brn_noniid_quick_path_writes_well_formed_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert brn_noniid.main([*TINY_NONIID, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    rows = read_csv(out / "brn_noniid.csv")
    assert list(rows[0]) == ["seed", "step", *(f"test_accuracy_{k}" for k in MODELS)]
    assert [(r["seed"], r["step"]) for r in rows] == [(s, t) for s in (0, 1) for t in (0, 10, 20)]
    for row in rows:
        assert all(0 <= row[f"test_accuracy_{k}"] <= 1 for k in MODELS)
        if row["step"] == 0:  # one seed's weights for the three; BN = BRN in eval before training
            assert len({row[f"test_accuracy_{k}"] for k in MODELS}) == 1
    assert rows[:3] != [{**r, "seed": 0.0} for r in rows[3:]]  # another seed, another run

    final = noniid_final(rows)
    markdown = (out / "brn_noniid.md").read_text()
    assert "| model | batches | final test accuracy | best test accuracy |" in markdown
    assert f"| BRN | 2 per batch | {mean_std(final['brn'])} |" in markdown
    assert f"| BN | i.i.d. | {mean_std(final['bn_iid'])} |" in markdown
    assert "seeds 0, 1. Data: MNIST, train 400 of 10,000 images" in markdown
    beats = Comparison(
        "BRN beats BN on non-i.i.d. batches", final["brn"], final["bn"], 0.01, ("BRN", "BN")
    )
    gap = Comparison(
        "BRN does not close the whole gap to BN on i.i.d. batches",
        final["bn_iid"],
        final["brn"],
        0.01,
        ("BN i.i.d.", "BRN"),
    )
    assert verdict_table([beats, gap]) in markdown
    figure = {"brn_noniid.png"} if HAVE_MATPLOTLIB else set()
    assert written_files(out) == {"brn_noniid.csv", "brn_noniid.md", *figure}

    assert last == (
        "final test accuracy (inference statistics, mean ± std over 2 seeds), 2 classes per "
        f"batch: BN {mean_std(final['bn'])}, BRN {mean_std(final['brn'])}; BN on i.i.d. "
        f"batches {mean_std(final['bn_iid'])}; BRN beats BN: {beats.verdict}"
    )


def test_brn_noniid_claims_follow_the_rule():
    def rows(bn, brn, iid) -> list[dict]:
        untrained = [{"seed": s, "step": 0, **dict.fromkeys(final_keys, 0.1)} for s in range(3)]
        return untrained + [
            {"seed": s, "step": 100, **dict(zip(final_keys, accuracies))}
            for s, accuracies in enumerate(zip(bn, brn, iid))
        ]

    final_keys = [f"test_accuracy_{k}" for k in MODELS]
    bn, brn = [0.90, 0.91, 0.92], [0.970, 0.975, 0.980]
    beats, gap = brn_noniid.comparisons(rows(bn, brn, [0.990, 0.991, 0.992]))
    assert (beats.better, beats.worse, gap.better) == (brn, bn, [0.990, 0.991, 0.992])
    assert (beats.verdict, gap.verdict) == ("reproduced", "reproduced")  # 0.016 > 0.006
    # BRN within a point of BN on i.i.d. batches, and the spread says so: gap not reproduced
    _, gap = brn_noniid.comparisons(rows(bn, brn, [0.976, 0.977, 0.978]))
    assert gap.verdict == "not reproduced" and gap.needs_more_seeds
    # a gain of 0.005 within a spread of 0.025: inconclusive
    beats, _ = brn_noniid.comparisons(rows([0.95, 0.97, 0.99], [0.96, 0.975, 0.99], brn))
    assert beats.verdict == "inconclusive"


def test_brn_noniid_adds_seeds_where_a_claim_needs_them(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "SEEDS", (0, 1))  # the defaults, made small
    monkeypatch.setattr(common, "MORE_SEEDS", (2,))
    argv = [*TINY_NONIID[: TINY_NONIID.index("--seeds")], "--steps", "10"]
    close = Comparison("close", [0.5, 0.6], [0.55, 0.6], 0.01)  # needs more seeds
    monkeypatch.setattr(brn_noniid, "comparisons", lambda rows: [close])
    assert brn_noniid.main([*argv, "--out", str(tmp_path)]) == 0
    assert {r["seed"] for r in read_csv(tmp_path / "brn_noniid.csv")} == {0, 1, 2}
    far = Comparison("far", [0.9, 0.91], [0.1, 0.11], 0.01)
    monkeypatch.setattr(brn_noniid, "comparisons", lambda rows: [far])
    assert brn_noniid.main([*argv, "--out", str(tmp_path)]) == 0
    assert {r["seed"] for r in read_csv(tmp_path / "brn_noniid.csv")} == {0, 1}


def test_brn_noniid_same_seed_same_results_whatever_the_other_seeds(tmp_path):
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert brn_noniid.main([*TINY_NONIID, "--out", str(both)]) == 0
    assert brn_noniid.main([*TINY_NONIID, "--seeds", "1", "--out", str(alone)]) == 0
    seed_1 = [r for r in read_csv(both / "brn_noniid.csv") if r["seed"] == 1]
    assert read_csv(alone / "brn_noniid.csv") == seed_1


@pytest.mark.skipif(
    not FashionMNIST.system_dir.is_dir(), reason="no Debian package dataset-fashion-mnist"
)
def test_brn_noniid_on_fashion_mnist(tmp_path, capsys):
    argv = [*TINY_NONIID, "--dataset", "fashion-mnist", "--data-dir", str(FashionMNIST.system_dir)]
    assert brn_noniid.main([*argv, "--seeds", "0", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "brn_noniid.md").read_text()
    assert "Data: Fashion-MNIST, train 400 of 60,000 images" in markdown
    assert "over 1 seed), 2 classes per batch: BN 0." in capsys.readouterr().out


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


def test_brn_noniid_defaults_yield_to_explicit_options():
    quick = brn_noniid.parse_args(["--quick"])
    assert (quick.steps, quick.eval_every, quick.width, quick.test_limit) == (300, 50, 8, 1_000)
    assert (quick.seeds, quick.more_seeds, quick.out) == ([0, 1], (), "results/brn_noniid/mnist")
    assert brn_noniid.parse_args(["--quick", "--classes-per-batch", "1"]).classes_per_batch == 1
    assert brn_noniid.parse_args(["--quick", "--seeds", "5"]).seeds == [5]
    full = brn_noniid.parse_args(["--dataset", "fashion-mnist"])
    assert (full.steps, full.width, full.test_limit, full.classes_per_batch) == (2000, 16, None, 2)
    assert (full.seeds, full.more_seeds) == ([0, 1, 2], (3, 4))
    assert full.out == "results/brn_noniid/fashion-mnist"
    assert brn_noniid.parse_args(["--seeds", "0", "1", "2"]).more_seeds == ()


def test_brn_noniid_bad_input_ends_with_one_line_and_nonzero_exit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        brn_noniid.main(["--batch-size", "3"])
    assert exit_info.value.code == 2
    assert "--batch-size must be at least 2 examples per class" in capsys.readouterr().err
    assert brn_noniid.main([*TINY_NONIID, "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert brn_noniid.main([*TINY_NONIID, "--train-limit", "10", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: 10 training images are fewer than one")


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
