"""Weight averaging (`train.optimizer.ema`): where Keras keeps the averaged weights, and how validation and
the checkpoints see them while training goes on with its own.

Keras' optimizer (`use_ema`) keeps the moving average as optimizer variables, so a resume checkpoint (the
model with its optimizer) keeps the average and the raw weights both. Keras' SwapEMAWeights callback cannot
be used: it refuses a MultiOptimizer (parameter groups), and swapping on epoch boundaries would leave a
step checkpoint holding swapped weights.
"""

from __future__ import annotations

import contextlib

import keras


def _optimizers(optimizer) -> list:
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    return list(inner.optimizers) if isinstance(inner, keras.optimizers.MultiOptimizer) else [inner]


def pairs(model) -> list[tuple]:
    """(weight, its average) for every averaged weight of a compiled model; empty without averaging."""
    found = []
    for optimizer in _optimizers(model.optimizer) if getattr(model, "optimizer", None) is not None else []:
        if getattr(optimizer, "use_ema", False) and getattr(optimizer, "built", False):
            averages = optimizer._model_variables_moving_average
            found += [(v, a) for v, a in zip(optimizer._trainable_variables, averages, strict=True) if a is not None]
    return found


class _RampedMomentum:
    """Keras' `ema_momentum` as momentum * min(1, step / total_steps) ** power. Keras reads it inside the
    train step, converting it to a tensor: here a function of the optimizer's own step counter, so it
    follows the step exactly, resume included (airbench's lookahead decay schedule)."""

    def __init__(self, optimizer, momentum: float, total_steps: int, power: float):
        self.optimizer, self.momentum, self.total_steps, self.power = optimizer, momentum, max(1, total_steps), power

    def __tf_tensor__(self, dtype=None, name=None):
        import tensorflow as tf

        progress = tf.minimum(tf.cast(self.optimizer.iterations, tf.float32) / self.total_steps, 1.0)
        value = self.momentum * progress**self.power
        return value if dtype is None else tf.cast(value, dtype)

    def __float__(self) -> float:  # the peak, for anything that reads it as a number
        return float(self.momentum)


def ramp_momentum(optimizer, total_steps: int, power: float) -> None:
    """Make a `use_ema` optimizer's averaging momentum grow from 0 to its `ema_momentum` over `total_steps`
    as (step / total_steps) ** power. Its saved config keeps the plain number (the peak)."""
    peak = float(optimizer.ema_momentum)
    get_config = optimizer.get_config
    optimizer.ema_momentum = _RampedMomentum(optimizer, peak, total_steps, power)
    optimizer.get_config = lambda: {**get_config(), "ema_momentum": peak}


def _raw_weights(model) -> list | None:
    """The values of the averaged weights (None without averaging)."""
    found = pairs(model)
    return [variable.numpy() for variable, _ in found] if found else None


def _use_averages(model) -> list | None:
    """Copy the averages into the weights; returns the values they replaced, for `_restore`."""
    raw = _raw_weights(model)
    for variable, average in pairs(model):
        variable.assign(average)
    return raw


def _restore(model, raw: list | None) -> None:
    if raw is not None:
        for (variable, _), value in zip(pairs(model), raw, strict=True):
            variable.assign(value)


@contextlib.contextmanager
def averaged(model):
    """The model holds its averaged weights inside the block and its own afterwards (no-op without averaging)."""
    raw = _use_averages(model)
    try:
        yield
    finally:
        _restore(model, raw)


class AveragedValidation(keras.callbacks.Callback):
    """Validation inside fit sees the averaged weights; after each fit the model holds the weights training
    goes on with (Keras' fit ends by copying the average in, which a resumed run's first, partial fit must
    not do, or it would continue from other weights than an uninterrupted run)."""

    def __init__(self):
        super().__init__()
        self._raw: list | None = None
        self._last_raw: list | None = None

    def on_test_begin(self, logs=None):
        self._raw = _use_averages(self.model)

    def on_test_end(self, logs=None):
        _restore(self.model, self._raw)
        self._raw = None

    def on_epoch_end(self, epoch, logs=None):
        self._last_raw = _raw_weights(self.model)

    def on_train_end(self, logs=None):
        _restore(self.model, self._last_raw)
