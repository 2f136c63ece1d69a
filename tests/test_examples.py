"""The main job, `python -m tinynorm.examples.mnist`, on a few hundred mnist-lite images."""

import importlib.util
import json
import pickle

import numpy as np
import pytest
from tinynorm.examples import mnist

QUICK = ["--train-limit", "512", "--test-limit", "500", "--batch-size", "32"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never touch the network or the real cache: the bundled mnist-lite is used."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TINYNORM_DATA", raising=False)
    monkeypatch.setattr(mnist.MNIST, "mirrors", ("http://127.0.0.1:9/",))


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_short_training_clearly_beats_chance(capsys, tmp_path):
    log = tmp_path / "log.json"
    assert mnist.main([*QUICK, "--epochs", "2", "--log", str(log)]) == 0
    line = last_line(capsys)
    assert line.startswith("test accuracy: ")
    accuracy = float(line.split(": ")[1])
    assert accuracy > 0.6  # chance is 0.1
    rows = json.loads(log.read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize("norm", mnist.NORMS)
def test_every_norm_builds_and_takes_a_training_step(norm):
    import tinynorm as tn
    import tinynorm.nn.functional as F

    tn.manual_seed(0)
    model = mnist.build_model(norm, total_steps=10, width=4)
    x = tn.randn(4, 1, 28, 28)
    y = tn.tensor(np.array([0, 1, 2, 3]))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert np.isfinite(loss.item()) and all(g is not None for g in grads)
    model.eval()
    assert model(x).shape == (4, 10)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    straight, cut = tmp_path / "straight.ckpt", tmp_path / "cut.ckpt"
    assert mnist.main([*QUICK, "--epochs", "2", "--save", str(straight)]) == 0

    class StopInEpochTwo(mnist.DataLoader):
        """Interrupts training (as Ctrl-C would) when the second epoch's shuffled loader starts."""

        def __init__(self, *args, seed=None, **kwargs):
            super().__init__(*args, seed=seed, **kwargs)
            self.interrupt = seed == 1

        def __iter__(self):
            if self.interrupt:
                raise KeyboardInterrupt
            return super().__iter__()

    monkeypatch.setattr(mnist, "DataLoader", StopInEpochTwo)
    assert mnist.main([*QUICK, "--epochs", "2", "--save", str(cut)]) == 130
    monkeypatch.setattr(mnist, "DataLoader", StopInEpochTwo.__mro__[1])
    assert pickle.loads(cut.read_bytes())["epoch"] == 1
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", str(cut), "--save", str(cut)]) == 0
    a, b = (pickle.loads(p.read_bytes()) for p in (straight, cut))
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key], b["model"][key])
    assert a["log"][-1]["test_accuracy"] == b["log"][-1]["test_accuracy"]
    assert [p.name for p in tmp_path.iterdir() if p.suffix in (".tmp", ".part")] == []
    assert mnist.main([*QUICK, "--eval-only", "--resume", str(straight)]) == 0
    assert float(last_line(capsys).split(": ")[1]) == pytest.approx(a["log"][-1]["test_accuracy"])


def test_bad_arguments_end_with_a_message_and_nonzero_exit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mnist.main(["--norm", "nope"])
    assert exit_info.value.code != 0
    assert "invalid choice" in capsys.readouterr().err
    assert mnist.main(["--resume", str(tmp_path / "missing.ckpt"), *QUICK]) == 1
    assert capsys.readouterr().err.strip().startswith("error: cannot read checkpoint")
    assert mnist.main(["--data-dir", str(tmp_path / "nowhere"), *QUICK]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1


def test_wrong_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "bn.ckpt"
    assert mnist.main([*QUICK, "--epochs", "1", "--save", str(ckpt)]) == 0
    assert mnist.main([*QUICK, "--norm", "gn", "--resume", str(ckpt)]) == 1
    assert "holds a 'bn' model, not 'gn'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_cuda_without_cupy_is_a_clear_error(capsys):
    assert mnist.main([*QUICK, "--device", "cuda"]) == 1
    assert "CuPy" in capsys.readouterr().err
