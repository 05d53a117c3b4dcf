"""The piecewise-linear (one-cycle, triangular) learning-rate schedule: values, serialization, the config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cnnctl.schema import OptimizerConfig

TRIANGLE = [[0.0, 0.2], [0.23, 1.0], [1.0, 0.07]]


def test_values_interpolate_between_the_points_and_hold_after_the_end(keras_module):
    from cnnctl.schedules import PiecewiseLinear

    schedule = PiecewiseLinear(1.5, TRIANGLE, total_steps=1000)
    assert float(schedule(0)) == pytest.approx(1.5 * 0.2)
    assert float(schedule(115)) == pytest.approx(1.5 * 0.6)  # half way up
    assert float(schedule(230)) == pytest.approx(1.5)
    assert float(schedule(615)) == pytest.approx(1.5 * (1.0 + 0.07) / 2)  # half way down
    assert float(schedule(1000)) == pytest.approx(1.5 * 0.07)
    assert float(schedule(5000)) == pytest.approx(1.5 * 0.07)


def test_it_is_a_serializable_keras_schedule(keras_module):
    from cnnctl.schedules import PiecewiseLinear

    schedule = PiecewiseLinear(0.1, [[0, 0], [0.3, 1], [1, 0]], total_steps=90)
    restored = keras_module.optimizers.schedules.deserialize(keras_module.optimizers.schedules.serialize(schedule))
    assert type(restored) is PiecewiseLinear
    assert [float(restored(s)) for s in (0, 27, 54, 90)] == pytest.approx([float(schedule(s)) for s in (0, 27, 54, 90)])


def test_the_optimizer_runs_it_over_all_the_runs_steps(keras_module):
    from cnnctl.compile import make_optimizer

    config = OptimizerConfig(name="sgd", learning_rate=1.0,
                             schedule={"type": "piecewise_linear", "points": [[0, 0], [0.5, 1], [1, 0]]})
    optimizer = make_optimizer(config, steps_per_epoch=10, epochs=4)  # 40 steps
    assert float(optimizer._learning_rate(20)) == pytest.approx(1.0)
    assert float(optimizer._learning_rate(30)) == pytest.approx(0.5)


@pytest.mark.parametrize(("points", "message"), [
    ([[0.1, 1], [1, 0]], "from fraction 0 to fraction 1, got 0.1 to 1"),
    ([[0, 1], [0.9, 0]], "from fraction 0 to fraction 1, got 0 to 0.9"),
    ([[0, 1], [0.5, 1], [0.5, 0], [1, 0]], "the fractions must increase"),
    ([[0, 1]], "at least 2"),
    ([[0, -1], [1, 0]], "greater than or equal to 0"),
])
def test_bad_points_are_refused(points, message):
    with pytest.raises(ValidationError, match=message):
        OptimizerConfig(name="sgd", schedule={"type": "piecewise_linear", "points": points})
