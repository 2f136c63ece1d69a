"""No device-to-host transfer inside a training step on the GPU path (issue 20).

`DeviceArray`, a NumPy array that stands in for a CuPy one, records every read back to the host
(`int()`, `float()`, `bool()`, `.item()`, `.tolist()`, `.get()`); `FakeCuPy`, NumPy standing in
for the CuPy module, hands out DeviceArrays. With both routed in, and every kernel call on the
CUDA kernels (Numba's simulator here), one training step of the main job's model, for each of
its normalizations, must read nothing back.
"""

import numpy as np
import pytest
from test_gpu_path import small_cnn
from tinynorm.examples.mnist import NORMS, build_model
from tinynorm.kernels import cuda

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import backend, kernels

READS: list[str] = []


class DeviceArray(np.ndarray):
    """A NumPy array playing a CuPy one: each read back to the host is logged in READS."""

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


class FakeCuPy:
    """NumPy standing in for the CuPy module: its arrays are DeviceArrays."""

    def __getattr__(self, name):
        attribute = getattr(np, name)
        if isinstance(attribute, type) or not callable(attribute):
            return attribute
        return lambda *args, **kwargs: on_device(attribute(*args, **kwargs))


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
@pytest.mark.parametrize("kind", NORMS)
def test_a_training_step_with_each_norm_reads_nothing_back(fake_gpu, kind):
    """Every normalization of the main job, in test_gpu_path's small CNN (5 × 3 maps)."""
    tn.manual_seed(0)
    loss, reads = one_step(small_cnn(kind), (2, 2, 5, 3))
    assert isinstance(loss.data, DeviceArray) and np.isfinite(loss.data.view(np.ndarray))
    assert reads == []


def test_an_out_of_range_label_poisons_the_loss_on_a_gpu(fake_gpu):
    logits = tn.Tensor(on_device(np.zeros((2, 3))), requires_grad=True)
    loss = F.cross_entropy(logits, tn.Tensor(on_device(np.array([0, 3]))))
    assert fake_gpu == [] and np.isnan(loss.data.view(np.ndarray))
    with pytest.raises(IndexError, match="class index 3 is out of range"):  # the CPU raises
        F.cross_entropy(tn.zeros(2, 3), tn.tensor([0, 3]))
