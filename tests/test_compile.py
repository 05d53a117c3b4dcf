"""Optimizers and learning-rate schedules built from the config, as Keras computes them."""

from __future__ import annotations

import pytest

from cnnctl.compile import make_optimizer
from cnnctl.schema import OptimizerConfig


def rate_at(optimizer, step: int) -> float:
    schedule = optimizer._learning_rate  # a LearningRateSchedule or a variable
    return float(schedule(step)) if callable(schedule) else float(schedule.numpy())


def test_constant_and_plain_learning_rate():
    assert rate_at(make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.01), 10, 5), 0) == pytest.approx(0.01)
    config = OptimizerConfig(name="sgd", learning_rate=0.01, schedule={"type": "constant"})
    assert rate_at(make_optimizer(config, 10, 5), 40) == pytest.approx(0.01)


def test_inverse_time_is_keras2_legacy_decay():
    # Keras 2's Adam(lr=1e-4, decay=1e-6): lr / (1 + 1e-6 * iterations)
    config = OptimizerConfig(name="adam", learning_rate=1e-4,
                             schedule={"type": "inverse_time", "decay_rate": 1e-6, "decay_steps": 1})
    optimizer = make_optimizer(config, 391, 50)
    assert rate_at(optimizer, 100_000) == pytest.approx(1e-4 / (1 + 1e-6 * 100_000))


def test_exponential_and_cosine():
    config = OptimizerConfig(name="rmsprop", learning_rate=0.1,
                             schedule={"type": "exponential", "decay_rate": 0.5, "decay_steps": 10})
    assert rate_at(make_optimizer(config, 10, 5), 20) == pytest.approx(0.025)
    cosine = OptimizerConfig(name="adam", learning_rate=0.1, schedule={"type": "cosine"})
    optimizer = make_optimizer(cosine, 10, 5)  # decays over the whole run: 50 steps
    assert rate_at(optimizer, 0) == pytest.approx(0.1)
    assert rate_at(optimizer, 25) == pytest.approx(0.05)
    assert rate_at(optimizer, 50) == pytest.approx(0.0, abs=1e-7)


def test_optimizer_arguments_reach_keras():
    optimizer = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=True), 1, 1)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.nesterov is True
