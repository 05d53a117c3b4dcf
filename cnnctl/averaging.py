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


@contextlib.contextmanager
def averaged(model):
    """The model holds its averaged weights inside the block and its own afterwards (no-op without averaging)."""
    found = pairs(model)
    raw = [v.numpy() for v, _ in found]
    for variable, average in found:
        variable.assign(average)
    try:
        yield
    finally:
        for (variable, _), value in zip(found, raw, strict=True):
            variable.assign(value)


class AveragedValidation(keras.callbacks.Callback):
    """Validation inside fit sees the averaged weights; after each fit the model holds the weights training
    goes on with (Keras' fit ends by copying the average in, which a resumed run's first, partial fit must
    not do, or it would continue from other weights than an uninterrupted run)."""

    def __init__(self):
        super().__init__()
        self._raw: list | None = None
        self._last_raw: list | None = None

    def on_test_begin(self, logs=None):
        found = pairs(self.model)
        self._raw = [v.numpy() for v, _ in found] if found else None
        for variable, average in found:
            variable.assign(average)

    def on_test_end(self, logs=None):
        if self._raw is not None:
            for (variable, _), value in zip(pairs(self.model), self._raw, strict=True):
                variable.assign(value)
            self._raw = None

    def on_epoch_end(self, epoch, logs=None):
        found = pairs(self.model)
        self._last_raw = [v.numpy() for v, _ in found] if found else None

    def on_train_end(self, logs=None):
        if self._last_raw is not None:
            for (variable, _), value in zip(pairs(self.model), self._last_raw, strict=True):
                variable.assign(value)
