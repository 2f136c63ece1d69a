"""End to end: small models driven by the optimizers memorize one fixed batch (float32)."""

from __future__ import annotations

import numpy as np
import pytest

import tinynorm as tn
import tinynorm.nn.functional as F
from tinynorm import nn
from tinynorm.optim import SGD, Adam


def mlp_problem():
    """A 2-16-3 Tanh MLP and 12 random 2-d points with random labels."""
    tn.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    x = tn.randn(12, 2)
    y = tn.tensor(np.random.default_rng(0).integers(0, 3, 12))
    return model, x, y


def cnn_problem():
    """Conv -> ReLU -> MaxPool -> Flatten -> Linear on 16 random 1x8x8 images, 4 random labels."""
    tn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )
    x = tn.randn(16, 1, 8, 8)
    y = tn.tensor(np.random.default_rng(0).integers(0, 4, 16))
    return model, x, y


def train(model, optimizer, x, y, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


CASES = {
    "mlp-sgd-momentum": (mlp_problem, lambda ps: SGD(ps, lr=0.3, momentum=0.9), 400),
    "mlp-adam": (mlp_problem, lambda ps: Adam(ps, lr=0.05), 300),
    "cnn-sgd-momentum": (cnn_problem, lambda ps: SGD(ps, lr=0.05, momentum=0.9), 100),
    "cnn-adam": (cnn_problem, lambda ps: Adam(ps, lr=0.01), 100),
}


@pytest.mark.parametrize("case", CASES)
def test_model_memorizes_a_fixed_batch(case):
    problem, make_optimizer, steps = CASES[case]
    model, x, y = problem()
    losses = train(model, make_optimizer(model.parameters()), x, y, steps)
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert losses[0] > 0.5  # random labels: the untrained model is far from them
    assert losses[-1] < 0.05
    assert losses[-1] < losses[0]
    with tn.no_grad():
        predictions = model(x).argmax(1).numpy()
    np.testing.assert_array_equal(predictions, y.numpy())


@pytest.mark.parametrize("problem", [mlp_problem, cnn_problem])
def test_training_is_repeatable_with_the_same_seed(problem):
    runs = []
    for _ in range(2):
        model, x, y = problem()
        runs.append(train(model, Adam(model.parameters(), lr=0.01), x, y, 5))
    assert runs[0] == runs[1]


def test_optimizer_keeps_working_after_double():
    """.double() keeps the Parameter objects, so an optimizer made before it still updates them."""
    model, x, y = mlp_problem()
    optimizer = SGD(model.parameters(), lr=0.3, momentum=0.9)
    model.double()
    losses = train(model, optimizer, x.double(), y, 50)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]
