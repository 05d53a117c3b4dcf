"""A run's inputs to Keras' fit: the training batches (augmented, class-weighted, each worker its share)
and the validation batches, from the uint8 splits."""

from __future__ import annotations

from cnnctl import augment, runtime
from cnnctl.compile import with_class_weights
from cnnctl.data import Splits, make_dataset, make_epoch_dataset
from cnnctl.schema import Config


def training(config: Config, splits: Splits, *, one_hot: bool, class_weight, strategy, distribute: str):
    """`batches(start_epoch, skip_steps=0, epochs=None)`: the training dataset from that point on.

    Epoch e is a permutation seeded by (seed, e), augmented by `data.augment` seeded by (seed, e,
    step); class weights are per-example sample weights; under multi_worker each worker builds and
    reads only its share (`runtime.worker_input`).
    """
    train = config.train
    augmenter = augment.make(config.data.augment, config.seed)  # training batches only

    def epochs_from(start_epoch, skip_steps=0, epochs=None, shard=None):
        batches = make_epoch_dataset(splits.x_train, splits.y_train, batch_size=train.batch_size,
                                     num_classes=len(splits.class_names), one_hot=one_hot, shuffle=train.shuffle,
                                     seed=config.seed, start_epoch=start_epoch, skip_steps=skip_steps, epochs=epochs,
                                     shard=shard, augment=augmenter)
        return with_class_weights(batches, class_weight)

    return runtime.worker_input(strategy, distribute, epochs_from), epochs_from


def validation(config: Config, splits: Splits, *, one_hot: bool):
    """The validation batches in order, or None without validation."""
    if splits.x_val is None:
        return None
    return make_dataset(splits.x_val, splits.y_val, batch_size=config.train.batch_size,
                        num_classes=len(splits.class_names), one_hot=one_hot)
