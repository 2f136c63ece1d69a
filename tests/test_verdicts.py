"""The verdict rule of the experiments (examples/verdicts.py) and the designs whose statistics
pool few values (examples/designs.py)."""

import numpy as np
import pytest
from tinynorm.examples import designs, verdicts

import tinynorm as tn
from tinynorm import nn


def compare(better, worse, effect=0.01):
    return verdicts.Comparison("claim", better, worse, effect)


def test_sample_std_is_ddof_1_and_zero_for_one_seed():
    assert verdicts.sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert verdicts.sample_std([0.5]) == 0.0
    assert verdicts.mean_std([0.9, 0.92, 0.94]) == "0.9200 ± 0.0200"


@pytest.mark.parametrize(
    ("better", "worse", "verdict"),
    [
        ([0.95, 0.96, 0.97], [0.90, 0.91, 0.92], "reproduced"),  # gain 0.05 > noise 0.02
        ([0.900, 0.901, 0.902], [0.900, 0.901, 0.902], "not reproduced"),  # 0 + 0.002 < 0.01
        ([0.90, 0.95, 1.00], [0.90, 0.92, 0.94], "inconclusive"),  # gain 0.03 < noise 0.07
        ([0.80, 0.81, 0.82], [0.90, 0.91, 0.92], "not reproduced"),  # the other way round
    ],
)
def test_the_rule(better, worse, verdict):
    c = compare(better, worse)
    assert c.verdict == verdict
    assert c.gain == pytest.approx(np.mean(better) - np.mean(worse))
    assert c.noise == pytest.approx(np.std(better, ddof=1) + np.std(worse, ddof=1))
    assert c.line().endswith(f"**{verdict}**") and "3 seeds" in c.numbers()


def test_five_seeds_where_the_difference_is_within_two_std():
    assert compare([0.90, 0.95, 1.00], [0.90, 0.92, 0.94]).needs_more_seeds  # 0.03 < 2 × 0.05
    assert not compare([0.95, 0.96, 0.97], [0.90, 0.91, 0.92]).needs_more_seeds
    assert not compare([0.9, 0.95, 1.0, 0.9, 1.0], [0.9, 0.92, 0.94, 0.9, 0.9]).needs_more_seeds


@pytest.mark.parametrize(("spread", "seeds"), [(0.0, [0, 1, 2]), (0.05, [0, 1, 2, 3, 4])])
def test_run_seeds_adds_seeds_only_where_a_comparison_needs_them(spread, seeds):
    def run_seed(seed):
        noisy = 0.9 + spread * (seed % 3 - 1)
        return [{"seed": seed, "norm": "a", "acc": noisy}, {"seed": seed, "norm": "b", "acc": 0.9}]

    def comparisons(rows):
        a, b = (verdicts.per_seed(rows, "acc", norm=n) for n in "ab")
        return [verdicts.Comparison("a beats b", a, b, 0.01)]

    rows = verdicts.run_seeds([0, 1, 2], run_seed, comparisons)
    assert sorted({r["seed"] for r in rows}) == seeds
    assert verdicts.run_seeds([0, 1, 2], run_seed, comparisons, more=()) == rows[:6]


def bn_input(model: nn.Module, layer_type: type) -> list[np.ndarray]:
    """The inputs of every `layer_type` layer in a forward pass of `model`."""
    seen = []
    for layer in model.modules():
        if isinstance(layer, layer_type):
            forward = layer.forward
            layer.forward = lambda x, forward=forward: (seen.append(x.numpy()), forward(x))[1]
    model(tn.tensor(np.random.default_rng(0).standard_normal((2, 1, 28, 28), np.float32)))
    return seen


def test_fc_net_batch_norm_at_batch_2_sees_two_values_per_statistic():
    tn.manual_seed(0)
    model = designs.fc_net("bn", 100)
    inputs = bn_input(model, nn.BatchNorm1d)
    assert [x.shape for x in inputs] == [(2, 100), (2, 100)]
    out = designs.fc_net("bn", 100)[2](tn.tensor(inputs[0])).numpy()  # a fresh BatchNorm1d
    # two values per statistic normalize to ±d/sqrt(d² + eps), d half their difference: ±1
    np.testing.assert_allclose(out[0], -out[1], atol=1e-6)
    assert np.abs(out).max() <= 1 and np.median(np.abs(out)) > 0.99


def test_small_maps_cnn_has_norms_on_7x7_and_3x3_maps():
    tn.manual_seed(0)
    model = designs.small_maps_cnn("bn", 100, width=4)
    shapes = [x.shape for x in bn_input(model, nn.BatchNorm2d)]
    assert shapes == [(2, 4, 28, 28), (2, 8, 14, 14), (2, 16, 7, 7), (2, 16, 3, 3)]
    assert model(tn.tensor(np.zeros((2, 1, 28, 28), np.float32))).shape == (2, 10)


@pytest.mark.parametrize("design", ["fc", "small-maps"])
def test_every_norm_of_a_design_builds_and_trains_one_step(design):
    x = tn.tensor(np.random.default_rng(1).standard_normal((4, 1, 28, 28), np.float32))
    for norm in designs.DESIGN_NORMS[design]:
        tn.manual_seed(0)
        model = designs.DESIGNS[design](norm, 10, 4)
        model(x).sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads), norm
