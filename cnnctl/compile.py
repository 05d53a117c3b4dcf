"""What `model.compile` gets from `config.train`: the optimizer with its learning-rate schedule, and the metrics."""

from __future__ import annotations

from cnnctl.schema import OptimizerConfig, TrainConfig


def make_schedule(config: OptimizerConfig, steps_per_epoch: int, epochs: int):
    """The learning rate: a number, or a Keras LearningRateSchedule of the optimizer's step."""
    import keras

    schedules = keras.optimizers.schedules
    lr = config.learning_rate
    s = config.schedule
    if s is None or s.type == "constant":
        return lr
    if s.type == "inverse_time":
        return schedules.InverseTimeDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    if s.type == "exponential":
        return schedules.ExponentialDecay(lr, s.decay_steps, s.decay_rate, staircase=s.staircase)
    total = s.decay_steps or max(1, steps_per_epoch * epochs - s.warmup_steps)
    if s.warmup_steps:
        return schedules.CosineDecay(0.0, total, alpha=s.alpha, warmup_target=lr, warmup_steps=s.warmup_steps)
    return schedules.CosineDecay(lr, total, alpha=s.alpha)


def make_optimizer(config: OptimizerConfig, steps_per_epoch: int, epochs: int):
    import keras

    classes = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
               "adamw": keras.optimizers.AdamW, "adagrad": keras.optimizers.Adagrad,
               "adadelta": keras.optimizers.Adadelta, "adamax": keras.optimizers.Adamax,
               "nadam": keras.optimizers.Nadam}
    return classes[config.name](learning_rate=make_schedule(config, steps_per_epoch, epochs), **config.keras_kwargs())


def make_metrics(config: TrainConfig) -> list:
    import keras

    metrics: list = []
    for name in config.metrics:
        if name == "accuracy":
            metrics.append("accuracy")
        elif config.loss == "categorical_crossentropy":
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
        else:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
    return metrics
