"""What Keras gets from `config.train`: the optimizer with its learning-rate schedule, the loss and the
metrics (`model.compile`), whether labels are one-hot, and the class weights (`model.fit`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnctl.config import echo, printable, suggest
from cnnctl.errors import ConfigError, DataError
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
    if s.type == "piecewise_linear":
        from cnnctl.schedules import PiecewiseLinear

        return PiecewiseLinear(lr, s.points, steps_per_epoch * epochs)
    total = s.decay_steps or max(1, steps_per_epoch * epochs - s.warmup_steps)
    if s.warmup_steps:
        return schedules.CosineDecay(0.0, total, alpha=s.alpha, warmup_target=lr, warmup_steps=s.warmup_steps)
    return schedules.CosineDecay(lr, total, alpha=s.alpha)


OPTIMIZER_CLASSES = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
                     "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "Nadam"}


def optimizer_class(name: str):
    """The optimizer class of `train.optimizer.name`: Keras', or cnnctl's Muon (convolution kernels too)."""
    if name == "muon":
        from cnnctl.muon import Muon

        return Muon
    import keras

    return getattr(keras.optimizers, OPTIMIZER_CLASSES[name])


def make_optimizer(config: OptimizerConfig, steps_per_epoch: int, epochs: int, variables=()):
    """The Keras optimizer `config` describes, with weight averaging (`ema`) if set.

    With `groups`, a `keras.optimizers.MultiOptimizer`: for the `variables` (the model's trainable ones) whose
    `layer/variable` name a group's pattern matches, the main optimizer's kind with its learning rate (and
    schedule) times the group's multiplier, or the group's own optimizer; the rest use the main optimizer.
    A pattern that matches nothing, or a variable two groups match, is a ConfigError.
    """
    main = _one_optimizer(config, steps_per_epoch, epochs, 1.0, config.weight_decay, config.ema)
    if not config.groups:
        return main
    import keras

    names = {variable_name(v) for v in variables}
    groups = group_of_each(config, sorted(names))
    mapping = keras.optimizers.OptimizerMap(default_optimizer=main)
    for index, group in enumerate(config.groups):
        if index not in groups.values():
            continue
        if group.optimizer is not None:
            own = group.optimizer
            if own.schedule is None:
                own = own.model_copy(update={"schedule": config.schedule})
            optimizer = _one_optimizer(own, steps_per_epoch, epochs, 1.0, own.weight_decay, config.ema)
        else:
            decay = config.weight_decay if group.weight_decay is None else group.weight_decay
            optimizer = _one_optimizer(config, steps_per_epoch, epochs, group.lr_multiplier, decay, config.ema)
        mapping[f"[^/]+/(?:{group.match})"] = optimizer
    return keras.optimizers.MultiOptimizer(mapping)


def variable_name(variable) -> str:
    """`layer/variable` (a Keras variable's path without the model's name), what groups match."""
    return variable.path.split("/", 1)[-1]


def group_of_each(config: OptimizerConfig, names: list[str]) -> dict[str, int]:
    """For each variable name a group matches, the group's index; refuses patterns matching nothing
    and variables matched twice, naming them."""
    import re

    found: dict[str, int] = {}
    problems = []
    for index, group in enumerate(config.groups):
        matched = [name for name in names if re.fullmatch(group.match, name)]
        if not matched:
            problems.append(f"train.optimizer.groups[{index}].match: {echo(group.match)} matches no trainable "
                            f"variable (they are: {_listed(names)})")
        for name in matched:
            if name in found:
                problems.append(f"train.optimizer.groups[{index}].match: {echo(name)} is already in "
                                f"groups[{found[name]}]; a variable may be in one group only")
            found.setdefault(name, index)
    if problems:
        raise ConfigError(problems)
    return found


def _one_optimizer(config: OptimizerConfig, steps_per_epoch: int, epochs: int, multiplier: float,
                   weight_decay: float | None, ema):
    scaled = config if multiplier == 1.0 else config.model_copy(update={"learning_rate": config.learning_rate
                                                                        * multiplier})
    kwargs = config.keras_kwargs()
    kwargs.pop("weight_decay", None)
    if ema is not None:
        kwargs.update(use_ema=True, ema_momentum=ema.momentum, ema_overwrite_frequency=ema.overwrite_every)
    optimizer = optimizer_class(config.name)(
        learning_rate=make_schedule(scaled, steps_per_epoch, epochs),
        **({"weight_decay": weight_decay} if weight_decay is not None else {}), **kwargs)
    if config.exclude_from_weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(config.exclude_from_weight_decay))
    if ema is not None and ema.ramp:
        from cnnctl.averaging import ramp_momentum

        ramp_momentum(optimizer, steps_per_epoch * epochs, ema.ramp)
    return optimizer


def labels_one_hot(config: TrainConfig, augment_mixes: bool = False) -> bool:
    """Whether the pipeline makes labels one-hot rows (per batch) rather than class indices: for the
    categorical loss, for label smoothing (Keras' sparse loss has none; on hard labels the categorical
    loss is the same number), and when augmentation mixes images and so their labels (MixUp, CutMix)."""
    return config.loss.name == "categorical_crossentropy" or config.loss.label_smoothing > 0 or augment_mixes


def make_loss(config: TrainConfig, one_hot: bool):
    """The loss for labels in the form `labels_one_hot` chose: categorical on one-hot rows, sparse on indices.

    A loss without options is given to Keras by its name, exactly as before options existed.
    """
    loss = config.loss
    if not one_hot and loss.label_smoothing > 0:
        raise ValueError("label smoothing needs one-hot labels (see labels_one_hot)")
    if loss.plain:
        return "categorical_crossentropy" if one_hot else "sparse_categorical_crossentropy"
    import keras

    if one_hot:
        return keras.losses.CategoricalCrossentropy(from_logits=loss.from_logits,
                                                    label_smoothing=loss.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=loss.from_logits)


def make_metrics(config: TrainConfig, one_hot: bool | None = None) -> list:
    """Keras metrics for labels that are one-hot rows or class indices (default: as `labels_one_hot` says).
    Accuracy and top-k compare the largest outputs, so they hold for logits as for probabilities."""
    import keras

    one_hot = labels_one_hot(config) if one_hot is None else one_hot
    metrics: list = []
    for name in config.metrics:
        if name == "accuracy":
            metrics.append("accuracy")
        elif one_hot:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
        else:
            metrics.append(keras.metrics.SparseTopKCategoricalAccuracy(k=config.top_k, name="top_k_accuracy"))
    return metrics


def class_weights(setting: str | dict[str, float] | None, y_train, class_names: list[str]) -> dict[int, float] | None:
    """The weights of `train.class_weight` by class index (Keras' `class_weight` form), or None (unweighted).

    "auto" weighs class c by n_samples / (n_classes * count_c) over `y_train`, the training split actually
    used (after any validation hold-out), as scikit-learn's compute_class_weight("balanced") does; like
    it, it refuses a class without training images. A mapping weighs classes by name; the others weigh 1.
    Every index 0..n-1 gets a weight: each label's weight is gathered from a table (here and in Keras'
    fit), and a label past its end is an error on a CPU (a silent weight of 0 on a GPU).
    """
    if setting is None:
        return None
    n = len(class_names)
    if setting == "auto":
        counts = np.bincount(np.asarray(y_train, dtype=np.int64).ravel(), minlength=n)
        empty = [class_names[c] for c in range(n) if counts[c] == 0]
        if empty:
            which = f"class {echo(empty[0])} has" if len(empty) == 1 else f"classes {_listed(empty)} have"
            raise DataError(f"train.class_weight: auto weighs each class by its count among the {len(y_train):,} "
                            f"training images, and {which} none",
                            hint="give the weights by class name instead, or more images of those classes")
        return {c: len(y_train) / (n * int(counts[c])) for c in range(n)}
    unknown = [name for name in setting if name not in class_names]
    if unknown:
        raise ConfigError([f"train.class_weight: no class named {echo(name)} (classes: {_listed(class_names)}"
                           f"{suggest(name, class_names)})" for name in unknown])
    return {c: float(setting.get(name, 1.0)) for c, name in enumerate(class_names)}


def with_class_weights(dataset, class_weight: dict[int, float] | None):
    """Batches of (images, labels) with each example's class weight as a third element, Keras' sample weight
    (`dataset` itself without weights); labels are class indices or one-hot rows.

    This is what fit(class_weight=...) does to a tf.data.Dataset (the same table lookup; the loss becomes
    mean(weight * loss) per batch), done here because under multi_worker fit gets a distributed dataset,
    which Keras cannot map.
    """
    if class_weight is None:
        return dataset
    import tensorflow as tf

    table = tf.constant([class_weight[c] for c in range(len(class_weight))], tf.float32)

    def weigh(images, labels):
        classes = tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.shape.rank == 2 else labels
        return images, labels, tf.gather(table, classes)

    return dataset.map(weigh).prefetch(tf.data.AUTOTUNE)


def class_weight_fields(setting: str | dict[str, float] | None, weights: dict[int, float] | None,
                        class_names: list[str]) -> dict:
    """The manifest's record of the class weights a run trains with: by class name, and how they were set."""
    if weights is None:
        return {"class_weight": None, "class_weight_mode": None}
    return {"class_weight": {class_names[c]: w for c, w in weights.items()},
            "class_weight_mode": "auto" if setting == "auto" else "given"}


def describe_class_weights(setting: str | dict[str, float], weights: dict[int, float], class_names: list[str],
                           limit: int = 10) -> str:
    """`class weights (auto): airplane 0.52, …, truck 3.1`; past `limit` classes, the first ones and the range."""
    parts = [f"{printable(class_names[c], 24)} {w:.3g}" for c, w in weights.items()]
    if len(parts) > limit:
        low, high = min(weights.values()), max(weights.values())
        parts = [*parts[:limit - 1], f"… ({len(parts):,} classes, {low:.3g} to {high:.3g})"]
    return f"class weights ({'auto' if setting == 'auto' else 'given'}): {', '.join(parts)}"


def _listed(names: list[str], limit: int = 12) -> str:
    """`cat, dog`; past `limit` names, the first ones and how many more."""
    more = f", … ({len(names) - limit:,} more)" if len(names) > limit else ""
    return ", ".join(printable(name, 24) for name in names[:limit]) + more


def run_class_weights(setting: str | dict[str, float] | None, y_train, class_names: list[str],
                      log: Callable[[str], None]) -> tuple[dict[int, float] | None, dict]:
    """`class_weights` at a run's start: the weights, their manifest fields, and a line to `log` if weighted."""
    weights = class_weights(setting, y_train, class_names)
    if weights is not None:
        log(describe_class_weights(setting, weights, class_names))
    return weights, class_weight_fields(setting, weights, class_names)
