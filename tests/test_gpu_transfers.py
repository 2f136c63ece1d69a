"""What a training step costs the GPU path in transfers and launches (issue 20), without a GPU.

`DeviceArray`, a NumPy array that stands in for a CuPy one, records every read back to the host
(`int()`, `float()`, `bool()`, `.item()`, `.tolist()`, `.get()`) and every operation that
would be a launch on a GPU (a ufunc or reduction, a copy or cast, a write, a gather);
`FakeCuPy`, NumPy standing in for the CuPy module, hands out DeviceArrays and counts its calls
that make arrays. With both routed in, and every kernel call on the CUDA kernels (Numba's
simulator here, counted at `cuda._launch`): one training step of the main job's model, and of
each of its normalizations, must read nothing back; and a norm layer's forward and backward
must launch no more than 4 operations each way (the target).
"""

import numpy as np
import pytest
from test_gpu_path import small_cnn
from tinynorm.examples.mnist import build_model
from tinynorm.kernels import cuda

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import backend, kernels, nn
from tinynorm.variants import BY_KEY

READS: list[str] = []
LAUNCHES: list[str] = []  # array operations and Numba kernels, as a GPU would launch them
IN_KERNEL = []  # non-empty while a simulated kernel runs: its element accesses are no launches


def launch(what: str) -> None:
    if not IN_KERNEL:
        LAUNCHES.append(what)


def fancy(index) -> bool:
    """Whether indexing with `index` gathers (arrays in it) rather than takes a view."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (np.ndarray, list)) for p in parts)


class DeviceArray(np.ndarray):
    """A NumPy array playing a CuPy one: each read back to the host is logged in READS, each
    operation a GPU would launch in LAUNCHES."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        launch(f"{ufunc.__name__}.{method}")
        plain = [i.view(np.ndarray) if isinstance(i, DeviceArray) else i for i in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in kwargs["out"])
        return on_device(getattr(ufunc, method)(*plain, **kwargs))

    def astype(self, dtype, *args, copy=True, **kwargs):
        if copy or np.dtype(dtype) != self.dtype:
            launch("astype")
        return super().astype(dtype, *args, copy=copy, **kwargs)

    def copy(self, *args, **kwargs):
        launch("copy")
        return super().copy(*args, **kwargs)

    def __setitem__(self, index, value):
        launch("setitem")
        super().__setitem__(index, value)

    def __getitem__(self, index):
        if fancy(index):
            launch("gather")
        return super().__getitem__(index)

    def _read(self, how: str):
        READS.append(f"{how} of {self.shape} {self.dtype}")
        return self.view(np.ndarray)

    def __int__(self):
        return int(self._read("int()"))

    def __float__(self):
        return float(self._read("float()"))

    def __bool__(self):
        return bool(self._read("bool()"))

    def __index__(self):
        return self._read("index").__index__()

    def item(self, *args):
        return self._read(".item()").item(*args)

    def tolist(self):
        return self._read(".tolist()").tolist()

    def get(self):
        return self._read(".get()").copy()


def on_device(out):
    if isinstance(out, np.ndarray) and not isinstance(out, DeviceArray):
        return out.view(DeviceArray)
    if isinstance(out, tuple):
        return tuple(on_device(o) for o in out)
    return out


# calls that make a view when they can (no launch then), and calls that only allocate (never)
VIEWS = {"reshape", "broadcast_to", "asarray", "ascontiguousarray", "transpose", "moveaxis"}
ALLOCATIONS = {"empty", "empty_like"}


class FakeCuPy:
    """NumPy standing in for the CuPy module: its arrays are DeviceArrays; each call that makes
    an array (not a view, not one already there) counts as a launch."""

    def __getattr__(self, name):
        attribute = getattr(np, name)
        if (
            isinstance(attribute, type)
            or not callable(attribute)
            or isinstance(attribute, np.ufunc)
        ):
            return attribute

        def call(*args, **kwargs):
            out = attribute(*args, **kwargs)
            made = name not in VIEWS or not any(
                out is a or np.shares_memory(out, a) for a in args if isinstance(a, np.ndarray)
            )
            if made and name not in ALLOCATIONS:
                launch(f"xp.{name}")
            return on_device(out)

        return call


@pytest.fixture
def fake_gpu(monkeypatch):
    """Route DeviceArrays through the GPU path: `is_cupy` true for them, the array module
    `FakeCuPy`, every kernel call on `kernels/cuda.py`."""
    xp = FakeCuPy()

    def is_device(a) -> bool:
        return isinstance(a, DeviceArray)

    def module_of(a):
        return xp if is_device(a) else np

    for module in (kernels, backend):
        monkeypatch.setattr(module, "is_cupy", is_device)
        monkeypatch.setattr(module, "get_array_module", module_of)
    for name in (
        "ops.normalize",
        "ops.normalize_mixed",
        "ops.norms",
        "nn.normalization",
    ):
        monkeypatch.setattr(f"tinynorm.{name}.get_array_module", module_of, raising=False)
    monkeypatch.setattr(cuda, "get_array_module", module_of)
    monkeypatch.setattr(kernels, "_impl", lambda a: cuda if is_device(a) else kernels._cpu)
    run_kernel = cuda._launch

    def counted(kernel, grid, *args):
        if 0 not in grid:
            launch(f"kernel {kernel.__name__}")
        IN_KERNEL.append(kernel)
        try:
            run_kernel(kernel, grid, *args)
        finally:
            IN_KERNEL.pop()

    monkeypatch.setattr(cuda, "_launch", counted)
    READS.clear()
    return READS


def one_step(model, x_shape: tuple[int, ...]) -> tuple[tn.Tensor, list]:
    """One SGD step of `model` (as the main job's) on DeviceArrays; the loss and the host reads
    made during it."""
    model = model.double()
    for t in [*model.parameters(), *model.buffers()]:
        t.data = on_device(t.data)
    optimizer = tn.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    rng = np.random.default_rng(0)
    x = tn.Tensor(on_device(rng.standard_normal(x_shape)))
    y = tn.Tensor(on_device(np.arange(x_shape[0]) % 5))
    READS.clear()
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, list(READS)


@pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel")
def test_a_training_step_of_the_main_job_reads_nothing_back(fake_gpu):
    """The main job's model itself (batch norm, width 4, one 28×28 image: the simulator runs
    a Python thread per CUDA thread)."""
    tn.manual_seed(0)
    loss, reads = one_step(build_model("bn", total_steps=10, width=4), (1, 1, 28, 28))
    assert isinstance(loss.data, DeviceArray) and np.isfinite(loss.data.view(np.ndarray))
    assert reads == []


@pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel")
def test_a_training_step_with_weight_norm_reads_nothing_back(fake_gpu):
    """The main job's `wn` (weight-normalized layers with mean-only batch norm) in
    test_gpu_path's small CNN; every norm layer of `variants` is checked on its own below."""
    tn.manual_seed(0)
    loss, reads = one_step(small_cnn("wn"), (2, 2, 5, 3))
    assert isinstance(loss.data, DeviceArray) and np.isfinite(loss.data.view(np.ndarray))
    assert reads == []


def test_an_out_of_range_label_poisons_the_loss_on_a_gpu(fake_gpu):
    logits = tn.Tensor(on_device(np.zeros((2, 3))), requires_grad=True)
    loss = F.cross_entropy(logits, tn.Tensor(on_device(np.array([0, 3]))))
    assert fake_gpu == [] and np.isnan(loss.data.view(np.ndarray))
    with pytest.raises(IndexError, match="class index 3 is out of range"):  # the CPU raises
        F.cross_entropy(tn.zeros(2, 3), tn.tensor([0, 3]))


# A norm layer's launches per forward and per backward on (1, 4, 1, 2): issue 20's target is 4
# each way, met by every layer: a reduction, a small kernel over the statistics (`statistics`,
# `coefficients`; the mixtures' over rows, samples and channels), an elementwise pass; the
# layers with a step count add it, FRN its TLU's kernel.
TARGET = 4


def launches_of(layer, shape=(1, 4, 1, 2)) -> tuple[list[str], list[str]]:
    """The launches of one forward and one backward (input and parameter gradients included)
    of `layer` on DeviceArrays."""
    layer = layer.double()
    for t in [*layer.parameters(), *layer.buffers()]:
        t.data = on_device(t.data)
    rng = np.random.default_rng(0)
    x = tn.Tensor(on_device(rng.standard_normal(shape)), requires_grad=True)
    g = on_device(rng.standard_normal(shape))
    LAUNCHES.clear()
    y = layer(x)
    forward = list(LAUNCHES)
    LAUNCHES.clear()
    y.backward(g)
    return forward, list(LAUNCHES)


@pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel")
@pytest.mark.parametrize("kind", list(BY_KEY))
def test_a_norm_layer_reads_nothing_back_and_meets_the_launch_target(fake_gpu, kind):
    """One training-mode forward and backward of each norm layer (running estimates updated,
    parameter gradients accumulated): no read back, and at most 4 launches each way."""
    tn.manual_seed(0)
    forward, backward = launches_of(BY_KEY[kind].make(nn, (1, 4, 1, 2)))
    assert fake_gpu == []
    assert sum(a.startswith("kernel") for a in forward) >= 1
    assert len(forward) <= TARGET, forward
    assert len(backward) <= TARGET, backward


@pytest.mark.filterwarnings("ignore:Host array used in CUDA kernel")
@pytest.mark.parametrize("layer", ["BatchNorm1d", "BatchRenorm1d"])
def test_a_norm_layer_of_an_n_by_c_input_meets_the_launch_target(fake_gpu, layer):
    """BatchNorm1d and BatchRenorm1d on (N, C): the CPU reads the channels as columns; a GPU
    takes the runs layout (rows of one value), so the same three kernels and the step count."""
    tn.manual_seed(0)
    forward, backward = launches_of(getattr(nn, layer)(2), shape=(2, 2))
    assert fake_gpu == []
    assert "kernel _statistics" in forward
    assert len(forward) <= TARGET, forward
    assert len(backward) <= TARGET, backward
