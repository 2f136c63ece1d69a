"""examples/sequence_norms on a tiny subset of the bundled mnist-lite: rows per seed and model,
the accuracy curve, mean ± std, the verdicts, the reading order, clean errors."""

import csv
import importlib.util

import numpy as np
import pytest
from tinynorm.examples import sequence_norms

import tinynorm as tn
from tinynorm.data import MNIST

TINY = ["--data-dir", str(MNIST.bundled_dir), "--train-limit", "128", "--test-limit", "40"]
TINY += ["--steps", "4", "--hidden", "4"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_curves_table_and_verdicts(tmp_path, capsys):
    out = tmp_path / "out"
    assert sequence_norms.main([*TINY, "--seeds", "3", "5", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    rows = read_rows(out / "sequence_norms.csv")
    models = list(sequence_norms.MODELS)
    assert [(int(r["seed"]), r["model"]) for r in rows] == [(s, m) for s in (3, 5) for m in models]
    for row in rows:
        assert int(row["steps"]) == 4 and row["order"] == "rows" and row["diverged"] == "0"
        assert 0 <= float(row["test_accuracy"]) <= 1
    curves = read_rows(out / "sequence_norms_curves.csv")
    assert [int(c["step"]) for c in curves if (c["seed"], c["model"]) == ("3", "ln")] == [
        1,
        2,
        3,
        4,
    ]
    markdown = (out / "sequence_norms.md").read_text()
    ln = [float(r["test_accuracy"]) for r in rows if r["model"] == "ln"]
    assert f"{np.mean(ln):.4f} ± {np.std(ln, ddof=1):.4f}" in markdown
    for claim in ("LN-LSTM trains faster than LSTM", "BLN-LSTM trains faster than BN-LSTM"):
        assert claim in markdown and claim in last
    figure = {"sequence_norms.png"} if HAVE_MATPLOTLIB else set()
    assert {p.name for p in out.iterdir()} == {
        "sequence_norms.csv",
        "sequence_norms_curves.csv",
        "sequence_norms.md",
        *figure,
    }


def test_only_the_claims_of_the_models_run(tmp_path, capsys):
    argv = [*TINY, "--models", "lstm,ln", "--seeds", "1", "--out", str(tmp_path)]
    assert sequence_norms.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "LN-LSTM trains faster than LSTM" in last and "BN-LSTM" not in last


def test_columns_read_the_transposed_image(rng):
    images = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    tn.manual_seed(0)
    by_rows = sequence_norms.SequenceClassifier("ln", 5, "rows")
    tn.manual_seed(0)
    by_columns = sequence_norms.SequenceClassifier("ln", 5, "columns")
    transposed = np.ascontiguousarray(images.transpose(0, 1, 3, 2))
    np.testing.assert_allclose(
        by_columns(tn.tensor(images)).numpy(), by_rows(tn.tensor(transposed)).numpy(), rtol=1e-6
    )


def test_same_seed_same_results(tmp_path):
    argv = [*TINY, "--models", "bn", "--seeds", "2"]
    runs = []
    for name in ("a", "b"):
        assert sequence_norms.main([*argv, "--out", str(tmp_path / name)]) == 0
        runs.append(read_rows(tmp_path / name / "sequence_norms.csv"))
    keys = ("test_accuracy_quarter", "test_accuracy", "final_train_loss")
    assert [runs[0][0][k] for k in keys] == [runs[1][0][k] for k in keys]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "lstm,gru"], "--models: unknown gru"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--order", "diagonal"], "argument --order: invalid choice: 'diagonal'"),
    ],
)
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        sequence_norms.parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_and_quick():
    args = sequence_norms.parse_args([])
    assert (args.steps, args.hidden, args.models) == (400, 64, list(sequence_norms.MODELS))
    quick = sequence_norms.parse_args(["--quick", "--steps", "7"])
    assert (quick.steps, quick.hidden, quick.more_seeds) == (7, 16, ())
