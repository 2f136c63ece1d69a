"""The library's edges: empty batches, unsupported dtypes, all-or-nothing state loading, a
second backward through a freed graph, float32 gradients at |x| ~ 1e30, and two Python threads
training at once."""

import gc
import os
import re
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn

# every norm layer, with an input shape it takes (N, C = 3, ...)
LAYERS = {
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), (5, 3)),
    "BatchNorm1d-3d": (lambda: nn.BatchNorm1d(3), (5, 3, 4)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (5, 3, 4, 2)),
    "BatchNorm2d-cumulative": (lambda: nn.BatchNorm2d(3, momentum=None), (5, 3, 4, 2)),
    "BatchRenorm1d": (lambda: nn.BatchRenorm1d(3, warmup_steps=0), (5, 3)),
    "BatchRenorm2d": (lambda: nn.BatchRenorm2d(3, warmup_steps=0), (5, 3, 4, 2)),
    "MeanOnlyBatchNorm1d": (lambda: nn.MeanOnlyBatchNorm1d(3), (5, 3)),
    "MeanOnlyBatchNorm2d": (lambda: nn.MeanOnlyBatchNorm2d(3), (5, 3, 4, 2)),
    "BatchInstanceNorm2d": (lambda: nn.BatchInstanceNorm2d(3), (5, 3, 4, 2)),
    "SwitchableNorm2d": (lambda: nn.SwitchableNorm2d(3), (5, 3, 4, 2)),
    "BatchLayerNorm": (lambda: nn.BatchLayerNorm(3), (5, 3, 4, 2)),
    "LayerNorm": (lambda: nn.LayerNorm((3, 4, 2)), (5, 3, 4, 2)),
    "GroupNorm": (lambda: nn.GroupNorm(1, 3), (5, 3, 4, 2)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True), (5, 3, 4)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3), (5, 3, 4, 2)),
    "InstanceNorm2d-tracked": (
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (5, 3, 4, 2),
    ),
}


def state(module: nn.Module) -> dict[str, np.ndarray]:
    """A copy of every parameter and buffer."""
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


def assert_same_state(module: nn.Module, before: dict[str, np.ndarray]) -> None:
    after = state(module)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def trained(name: str) -> nn.Module:
    """The layer after two training steps on random batches, so its state is not the initial."""
    make, shape = LAYERS[name]
    layer = make()
    rng = np.random.default_rng(0)
    for _ in range(2):
        layer(tn.tensor(rng.standard_normal(shape).astype(np.float32)))
    return layer


# ---- 1. empty batches ----------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("empty", ["N=0", "S=0"])
@pytest.mark.parametrize("name", LAYERS)
def test_an_empty_batch_gives_an_empty_output_zero_grads_and_changes_no_state(
    name, empty, training
):
    """As PyTorch: an input without values gives an empty output of its shape, backward gives
    an empty input gradient and zero parameter gradients, and no running estimate moves."""
    _, shape = LAYERS[name]
    if empty == "S=0" and len(shape) == 2:
        pytest.skip("no spatial dims")
    shape = (0, *shape[1:]) if empty == "N=0" else (*shape[:2], 0, *shape[3:])
    layer = trained(name).train(training)
    if name == "LayerNorm" and empty == "S=0":
        layer = nn.LayerNorm(shape[1:])
    before = state(layer)
    x = tn.tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = layer(x)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape
    params = list(layer.parameters())
    assert params or not getattr(layer, "affine", True)
    for p in params:
        assert p.grad is not None
        np.testing.assert_array_equal(p.grad.numpy(), np.zeros(p.shape))
    assert_same_state(layer, before)


# ---- 2. input dtypes -----------------------------------------------------------------------
FUNCTIONAL = {
    "batch_norm": lambda x: F.batch_norm(x, None, None, training=True),
    "instance_norm": lambda x: F.instance_norm(x),
    "group_norm": lambda x: F.group_norm(x, 1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[1:]),
    "mean_only_batch_norm": lambda x: F.mean_only_batch_norm(x, None, training=True),
}


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.uint8, np.bool_])
@pytest.mark.parametrize("name", [*LAYERS, *FUNCTIONAL])
def test_other_input_dtypes_are_one_clear_type_error_before_any_state_changes(name, dtype):
    shape = (5, 3, 4, 2)
    x = tn.tensor(np.ones(shape if name in FUNCTIONAL else LAYERS[name][1], dtype))
    message = re.escape(f"input dtype {np.dtype(dtype)} is not supported (float32 or float64)")
    if name in FUNCTIONAL:
        with pytest.raises(TypeError, match=rf"^{name}: {message}"):
            FUNCTIONAL[name](x)
        return
    layer = trained(name)
    before = state(layer)
    with pytest.raises(TypeError, match=rf"^{type(layer).__name__}: {message}"):
        layer(x)
    assert_same_state(layer, before)


# ---- 3. load_state_dict all or nothing -----------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [np.array(["a", "b"]), np.array([None, 1.0], dtype=object), np.array([1 + 2j, 3j])],
    ids=["str", "object", "complex"],
)
def test_load_state_dict_with_an_uncastable_last_value_changes_nothing(bad):
    tn.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    before = state(model)
    new = {k: v + 1 for k, v in before.items()}
    assert list(new)[-1] == "1.bias"
    new["1.bias"] = bad
    with pytest.raises((TypeError, ValueError), match=r"1\.bias"):
        model.load_state_dict(new)
    assert_same_state(model, before)


# ---- 4. backward through a freed graph -----------------------------------------------------
def test_a_second_backward_needs_retain_graph_and_the_first_frees_the_graph():
    x = tn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * 2
    alive = weakref.ref(h)
    loss = (h * h).sum()
    del h
    loss.backward()
    gc.collect()
    assert alive() is None  # nothing the graph saved outlives its backward
    np.testing.assert_allclose(x.grad.numpy(), [8, 16, 24])
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time.*retain_gr"):
        loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [8, 16, 24])  # the failed call added nothing

    layer, x.grad = nn.BatchNorm1d(3), None
    y = layer(x.reshape(1, 3) * tn.tensor([[1.0], [2.0]]))
    y.sum().backward()
    with pytest.raises(RuntimeError, match="second time"):  # a new root, a freed subgraph
        (y * y).sum().backward()

    x.grad = None
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4, 8, 12])  # 2·2x: accumulated twice


# ---- 5. float32 gradients at |x| ~ 1e30 ----------------------------------------------------
def gradients(layer: nn.Module, x: np.ndarray, dy: np.ndarray, dtype) -> list[np.ndarray]:
    """d⟨dy, layer(x)⟩ for x and every parameter, in float64, after computing in `dtype`."""
    layer = layer.to(dtype)
    t = tn.tensor(x.astype(dtype), requires_grad=True)
    layer(t).backward(tn.tensor(dy.astype(dtype)))
    grads = [t.grad] + [p.grad for p in layer.parameters()]
    return [g.numpy().astype(np.float64) for g in grads]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # a variance of 1e60 → inf
@pytest.mark.parametrize(
    "name, device",
    [(name, "cpu") for name in LAYERS]
    + [("BatchNorm2d", "cuda-kernels"), ("GroupNorm", "cuda-kernels")],
)
def test_float32_gradients_at_1e30_match_a_float64_computation(name, device, simulate_gpu):
    """The combine coefficient beta ~ ρ² ~ 1e-60 underflows float32; kept in float64, the
    float32 gradients match float64's to float32 precision (they were 4-27% off).
    "cuda-kernels" runs the CUDA kernels (in the simulator without a GPU) on NumPy arrays: the
    fused op's `combine` (BatchNorm2d) and the composed GPU path of `combine_runs` (GroupNorm),
    on a smaller input, as the simulator runs every thread in Python."""
    make, shape = LAYERS[name]
    if device == "cuda-kernels":
        launched = simulate_gpu()  # so that the test cannot pass on the CPU kernels
        shape = (2, 3, 3, 2)
    rng = np.random.default_rng(3)
    x = (1e30 * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)
    dy = rng.standard_normal(shape).astype(np.float32).astype(np.float64)
    tn.manual_seed(0)
    single = gradients(make(), x, dy, np.float32)
    tn.manual_seed(0)
    double = gradients(make(), x, dy, np.float64)
    assert device == "cpu" or launched
    for g32, g64 in zip(single, double):
        assert np.abs(g32 - g64).max() <= 1e-6 * np.abs(g64).max()


# ---- 6. two threads at once ----------------------------------------------------------------
THREADS_SCRIPT = textwrap.dedent(
    """
    import threading

    import numpy as np

    import tinynorm as tn
    import tinynorm.nn.functional as F
    from tinynorm import nn


    def train(model, out, key):
        opt = tn.optim.SGD(model.parameters(), lr=0.1)
        rng = np.random.default_rng(0)
        for _ in range(4):
            x = tn.tensor(rng.standard_normal((8, 2, 9, 9)).astype(np.float32))
            y = tn.tensor(rng.integers(0, 3, 8))
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        out[key] = [p.numpy().copy() for p in model.parameters()]


    def model():
        tn.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4 * 3 * 3, 3),
        )


    alone = {}
    train(model(), alone, 0)
    together = {}
    models = [model() for _ in range(4)]
    threads = [threading.Thread(target=train, args=(m, together, i)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(together) == [0, 1, 2, 3], sorted(together)
    for params in together.values():
        for a, b in zip(params, alone[0]):
            np.testing.assert_array_equal(a, b)
    import numba
    print("layer", numba.threading_layer())
    """
)


def test_threads_training_at_once_under_the_workqueue_layer_match_one_thread(tmp_path):
    """Numba's workqueue layer aborts the process when two threads launch parallel kernels at
    once; the dispatch serializes the launches there, so the results equal one thread's."""
    script = tmp_path / "threads.py"
    script.write_text(THREADS_SCRIPT)
    env = {"NUMBA_THREADING_LAYER": "workqueue", "NUMBA_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer workqueue" in result.stdout
