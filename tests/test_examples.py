"""The main job, `python -m tinynorm.examples.mnist`, on a few hundred mnist-lite images."""

import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tinynorm.examples import mnist

import tinynorm as tn

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
    assert tn.load(cut)["epoch"] == 1
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", str(cut), "--save", str(cut)]) == 0
    a, b = (tn.load(p) for p in (straight, cut))
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        np.testing.assert_array_equal(a["model"][key].numpy(), b["model"][key].numpy())
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
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.ckpt" in err and len(err.splitlines()) == 1
    assert mnist.main(["--data-dir", str(tmp_path / "nowhere"), *QUICK]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1


def test_wrong_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "bn.ckpt"
    assert mnist.main([*QUICK, "--epochs", "1", "--save", str(ckpt)]) == 0
    capsys.readouterr()
    for option, value in (("--norm", "gn"), ("--optimizer", "adam"), ("--width", "8")):
        assert mnist.main([*QUICK, option, value, "--resume", str(ckpt)]) == 1
        out, err = capsys.readouterr()
        assert f"trained with {option} " in err and len(err.strip().splitlines()) == 1
        assert "epoch" not in out  # refused before any training


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_cuda_without_cupy_is_a_clear_error(capsys):
    assert mnist.main([*QUICK, "--device", "cuda"]) == 1
    assert "CuPy" in capsys.readouterr().err


def train_once(tmp_path, *extra) -> str:
    """A one-epoch run of the main job with --save; returns the checkpoint's path."""
    ckpt = tmp_path / "good.ckpt"
    assert mnist.main([*QUICK, "--epochs", "1", "--save", str(ckpt), *extra]) == 0
    return str(ckpt)


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker, crafted = tmp_path / "pwned", tmp_path / "crafted.ckpt"
    state = {"model": {}, "optimizer": {}, "schedule": {}, "epoch": 1, "norm": "bn", "log": []}
    crafted.write_bytes(pickle.dumps({**state, "extra": Exploit(marker)}))
    assert mnist.main([*QUICK, "--resume", str(crafted), "--eval-only"]) == 1
    err = capsys.readouterr().err
    assert "not a readable tinynorm checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_good_checkpoint(tmp_path, capsys):
    ckpt = train_once(tmp_path)
    good = Path(ckpt).read_bytes()
    capsys.readouterr()
    assert mnist.main([*QUICK, "--epochs", "1", "--lr", "1e6", "--save", ckpt]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the training loss is ") and "at epoch 1, step " in err
    assert "try a lower --lr (this run used 1e+06)" in err
    assert Path(ckpt).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if "good.ckpt" in p.name] == ["good.ckpt"]


def test_resuming_from_non_finite_weights_is_refused(tmp_path, capsys):
    state = tn.load(train_once(tmp_path))
    state["model"]["4.weight"].data[0, 0, 0, 0] = np.nan
    tn.save(state, tmp_path / "nan.ckpt")
    capsys.readouterr()
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", str(tmp_path / "nan.ckpt")]) == 1
    out, err = capsys.readouterr()
    assert "holds NaN or infinite values (in model/4.weight)" in err and "epoch" not in out


def test_resuming_with_more_epochs_continues_on_the_longer_schedule(tmp_path, capsys):
    """1 epoch saved, resumed with --epochs 2: epoch 2 trains at half the base lr, exactly as
    epoch 2 of an uninterrupted 2-epoch run (the cosine over 2 epochs), not at lr 0."""
    ckpt = train_once(tmp_path)
    straight = tmp_path / "straight.ckpt"
    assert mnist.main([*QUICK, "--epochs", "2", "--save", str(straight)]) == 0
    resumed = tmp_path / "resumed.ckpt"
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", ckpt, "--save", str(resumed)]) == 0
    one, two, want = (tn.load(p) for p in (ckpt, resumed, straight))
    assert two["epoch"] == 2 and two["config"]["epochs"] == 2
    w1, w2 = (s["model"]["0.weight"].numpy() for s in (one, two))
    assert np.abs(w2 - w1).max() > 1e-4  # epoch 2 changed the weights
    for key in want["model"]:
        np.testing.assert_array_equal(two["model"][key].numpy(), want["model"][key].numpy())


def test_an_explicit_lr_on_resume_is_the_new_base_lr(tmp_path, capsys):
    ckpt = train_once(tmp_path)
    assert tn.load(ckpt)["config"]["lr"] == 0.02
    again = tmp_path / "again.ckpt"
    args = [*QUICK, "--epochs", "2", "--lr", "0.005", "--resume", ckpt, "--save", str(again)]
    assert mnist.main(args) == 0
    assert "sgd lr 0.005" in capsys.readouterr().out
    state = tn.load(again)
    assert state["config"]["lr"] == 0.005
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.005


def test_options_left_out_on_resume_come_from_the_checkpoint(tmp_path, capsys):
    ckpt = train_once(tmp_path, "--optimizer", "adam", "--width", "8", "--norm", "gn")
    capsys.readouterr()
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", ckpt]) == 0
    assert "model: gn, " in capsys.readouterr().out
    assert mnist.main([*QUICK, "--resume", ckpt]) == 0  # --epochs 1 from the checkpoint
    assert f"{ckpt} holds 1 of --epochs 1: evaluating only" in capsys.readouterr().out


@pytest.mark.parametrize("option", ["--save", "--log"])
def test_an_unwritable_output_fails_before_training(tmp_path, capsys, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for path in (blocker / "out.ckpt", tmp_path):
        assert mnist.main([*QUICK, option, str(path)]) == 1
        out, err = capsys.readouterr()
        assert err.startswith(f"error: {option} {path} ") and "epoch" not in out + err


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("option", ["--train-limit", "--test-limit"])
def test_limits_must_be_positive(capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        mnist.main([option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got {value}" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_one_line_of_error(tmp_path, capsys):
    ckpt = train_once(tmp_path)
    data = bytearray(Path(ckpt).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(ckpt).write_bytes(data)
    capsys.readouterr()
    assert mnist.main([*QUICK, "--resume", ckpt, "--eval-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {ckpt}: not a readable") and len(err.splitlines()) == 1


def test_ctrl_c_inside_a_numba_kernel_is_a_clean_interrupt(tmp_path, capsys, monkeypatch):
    """A SIGINT that lands inside a Numba call surfaces as a SystemError caused by the
    KeyboardInterrupt; the main job still ends with `interrupted` and exit 130."""
    ckpt = train_once(tmp_path)
    capsys.readouterr()

    def forward(self, x):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as err:
            raise SystemError("CPUDispatcher(...) returned a result with an exception set") from err

    monkeypatch.setattr(tn.nn.Sequential, "forward", forward)
    assert mnist.main([*QUICK, "--epochs", "2", "--resume", ckpt, "--save", ckpt]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"interrupted; the last complete checkpoint is {ckpt} (after epoch 1)"


@pytest.mark.parametrize("numba_cache", ["warm", "cold"])
def test_sigint_at_any_moment_ends_with_interrupted_and_130(tmp_path, numba_cache):
    """Real SIGINTs at several moments of training: most land in Numba kernels or BLAS; with a
    cold cache, in Numba's compiler (whose callbacks from llvmlite drop a KeyboardInterrupt)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "TINYNORM_OFFLINE": "1"}
    env.pop("TINYNORM_DATA", None)
    command = [sys.executable, "-m", "tinynorm.examples.mnist", *QUICK, "--epochs", "50"]
    # a cold process compiles for seconds before its first step: two moments are enough there
    for delay in (0.05, 0.3, 0.55, 0.8) if numba_cache == "warm" else (0.3, 1.5):
        if numba_cache == "cold":
            env["NUMBA_CACHE_DIR"] = str(tmp_path / f"numba-{delay}")
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "epoch 1/50" not in seen:  # training has started (tqdm writes to stderr)
            char = proc.stderr.read(1)
            assert char, f"the main job ended before training: {seen}"
            seen += char
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, seen + rest
        lines = rest.strip().splitlines()
        assert "Traceback" not in rest and lines[-1].startswith("interrupted"), rest
