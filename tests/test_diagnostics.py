"""tinynorm.diagnostics.PercentileTracer: its percentiles are numpy.percentile's."""

import doctest

import numpy as np
import pytest

import tinynorm as tn
from tinynorm import backend, diagnostics, nn
from tinynorm.diagnostics import PercentileTracer

QS = (15, 50, 85)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_input_and_output_percentiles_match_numpy(rng):
    layer = nn.Sigmoid()
    xs = [rng.normal(i, 1 + i, (60, 100)).astype(np.float32) for i in range(3)]
    with (
        PercentileTracer(layer, QS, which="input") as inputs,
        PercentileTracer(layer, QS, which="output") as outputs,
    ):
        for x in xs:
            layer(tn.tensor(x))
    assert inputs.steps.tolist() == outputs.steps.tolist() == [0, 1, 2]
    for i, x in enumerate(xs):
        np.testing.assert_allclose(inputs.values[i], np.percentile(x, QS), rtol=1e-6)
        np.testing.assert_allclose(outputs.values[i], np.percentile(sigmoid(x), QS), rtol=1e-6)


def test_index_selects_one_unit_along_the_feature_axis(rng):
    x2 = rng.normal(size=(60, 10)).astype(np.float32)
    x3 = rng.normal(size=(8, 10, 5)).astype(np.float32)
    layer = nn.Identity()
    with PercentileTracer(layer, (2.5, 50, 97.5), index=3) as tracer:
        layer(tn.tensor(x2))
        layer(tn.tensor(x3))
    np.testing.assert_allclose(tracer.values[0], np.percentile(x2[:, 3], (2.5, 50, 97.5)))
    np.testing.assert_allclose(tracer.values[1], np.percentile(x3[:, 3, :], (2.5, 50, 97.5)))
    with PercentileTracer(layer, QS, index=-1, dim=2) as last_position:
        layer(tn.tensor(x3))
    np.testing.assert_allclose(last_position.values[0], np.percentile(x3[:, :, -1], QS))
    assert tracer.columns == ["step", "p2.5", "p50", "p97.5"]


def test_records_training_passes_only_unless_asked(rng):
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid())
    x = tn.tensor(rng.normal(size=(16, 4)).astype(np.float32))
    training = PercentileTracer(model[1], QS)
    always = PercentileTracer(model[1], QS, training_only=False)
    model(x)
    model.eval()
    model(x)
    model.train()
    model(x)
    assert training.steps.tolist() == [0, 1]  # the eval pass neither recorded nor counted
    assert always.steps.tolist() == [0, 1, 2]


def test_every_records_one_pass_in_n(rng):
    layer = nn.Identity()
    tracer = PercentileTracer(layer, (50,), every=3)
    for i in range(7):
        layer(tn.tensor(np.full((2, 2), float(i), np.float32)))
    assert tracer.steps.tolist() == [0, 3, 6]
    assert tracer.values[:, 0].tolist() == [0.0, 3.0, 6.0]
    assert tracer.to_rows() == [
        {"step": 0, "p50": 0.0},
        {"step": 3, "p50": 3.0},
        {"step": 6, "p50": 6.0},
    ]


def test_remove_and_the_context_manager_stop_tracing_but_keep_the_records(rng):
    layer = nn.Identity()
    x = tn.tensor(rng.normal(size=(5, 3)).astype(np.float32))
    tracer = PercentileTracer(layer, QS)
    layer(x)
    tracer.remove()
    layer(x)
    assert len(tracer.records) == 1
    with PercentileTracer(layer, QS, which="output") as scoped:
        layer(x)
    layer(x)
    assert len(scoped.records) == 1
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_tracing_changes_neither_the_output_nor_the_gradients(rng):
    tn.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Sigmoid(), nn.Linear(4, 2))
    x = tn.tensor(rng.normal(size=(10, 6)).astype(np.float32))

    def output_and_grads():
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        return [out.numpy(), *(p.grad.numpy() for p in model.parameters())]

    plain = output_and_grads()
    with PercentileTracer(model[2], QS), PercentileTracer(model[2], QS, which="output"):
        traced = output_and_grads()
    for a, b in zip(plain, traced):
        np.testing.assert_array_equal(a, b)


def test_empty_record_arrays_have_the_right_shapes():
    tracer = PercentileTracer(nn.Identity(), QS)
    assert tracer.steps.shape == (0,) and tracer.values.shape == (0, 3)
    assert tracer.to_rows() == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(which="grad"), dict(percentiles=()), dict(percentiles=(101,)), dict(every=0)],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        PercentileTracer(nn.Identity(), **kwargs)


def test_cupy_data_is_traced_on_the_device(rng):
    try:
        backend.cupy_or_error()
    except RuntimeError as err:
        pytest.skip(str(err))
    x = rng.normal(size=(60, 10)).astype(np.float32)
    layer = nn.Identity()
    with PercentileTracer(layer, QS, index=2) as tracer:
        layer(tn.tensor(x).cuda())
    np.testing.assert_allclose(tracer.values[0], np.percentile(x[:, 2], QS), rtol=1e-5)


def test_docstring_example_runs():
    assert doctest.testmod(diagnostics).failed == 0
