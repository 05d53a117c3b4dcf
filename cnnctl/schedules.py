"""Learning-rate schedules Keras lacks, as serializable `keras.optimizers.schedules.LearningRateSchedule`s.

A schedule is a function of the optimizer's step counter alone, which a resume checkpoint restores, so a
resumed run continues at its exact step of the schedule.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="cnnctl")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` times a factor interpolated linearly between `points`, (fraction of `total_steps`,
    factor) pairs with fractions rising from 0 to 1; after the last point the last factor holds.

    [[0, 0.2], [0.23, 1], [1, 0.07]] over 1,000 steps rises from 0.2x to 1x at step 230, then falls to
    0.07x at step 1,000 (airbench's triangle); [[0, 0], [0.3, 1], [1, 0]] is a one-cycle schedule.
    """

    def __init__(self, learning_rate: float, points, total_steps: int, name: str = "piecewise_linear"):
        self.learning_rate = float(learning_rate)
        self.points = [[float(f), float(v)] for f, v in points]
        self.total_steps = int(total_steps)
        self.name = name

    def __call__(self, step):
        fraction = keras.ops.cast(step, "float32") / float(max(1, self.total_steps))
        factor = keras.ops.convert_to_tensor(self.points[0][1], "float32")
        for (f0, v0), (f1, v1) in zip(self.points, self.points[1:], strict=False):
            # each segment adds its rise over the part of it already passed (all of it, once past its end)
            factor = factor + (v1 - v0) / (f1 - f0) * keras.ops.clip(fraction - f0, 0.0, f1 - f0)
        return self.learning_rate * factor

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "points": self.points, "total_steps": self.total_steps,
                "name": self.name}
