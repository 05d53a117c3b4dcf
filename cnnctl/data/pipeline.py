"""tf.data pipelines from uint8 arrays: batches are scaled (and one-hot encoded) per batch."""

from __future__ import annotations

import numpy as np

from cnnctl.errors import DataError


def _batch_transform(num_classes: int, one_hot: bool):
    import tensorflow as tf

    def scale(images, labels):
        images = tf.cast(images, tf.float32) / 255.0
        labels = tf.one_hot(labels, num_classes) if one_hot else tf.cast(labels, tf.int32)
        return images, labels

    return scale


def _deterministic(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True  # same seed, same batches: runs must be reproducible
    return dataset.with_options(options)


def make_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool, shuffle: bool, seed: int,
                 shuffle_buffer: int | None = None, drop_remainder: bool = False):
    """Batches of (float32 images in [0, 1], int32 or one-hot labels) from uint8 arrays.

    The uint8 arrays go into the pipeline as they are; casting and one-hot encoding happen per batch.
    `shuffle_buffer` None means the whole set (a perfect shuffle); 0 or 1 means no shuffling.
    """
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    buffer = len(x) if shuffle_buffer is None else shuffle_buffer
    if shuffle and buffer > 1:
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(_batch_transform(num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE)
    return _deterministic(dataset).prefetch(tf.data.AUTOTUNE)


def make_epoch_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool, shuffle: bool, seed: int,
                       start_epoch: int = 0, skip_steps: int = 0, epochs: int | None = None):
    """Training batches, epoch after epoch, where epoch e is a permutation seeded by (seed, e).

    The order of any epoch depends only on the seed and the epoch number, never on how many
    epochs this process has run: a run resumed at epoch e, step k (`start_epoch`, `skip_steps`)
    sees exactly the batches an uninterrupted run would. Batches never straddle two epochs.
    `epochs` None repeats forever (use with fit's steps_per_epoch).
    """
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    images, labels = tf.constant(x), tf.constant(y)
    count = len(x)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    last = start_epoch + epochs if epochs is not None else 2**62
    dataset = tf.data.Dataset.range(start_epoch, last).flat_map(epoch_batches).skip(skip_steps)
    transform = _batch_transform(num_classes, one_hot)
    dataset = dataset.map(lambda index: transform(tf.gather(images, index), tf.gather(labels, index)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return _deterministic(dataset).prefetch(tf.data.AUTOTUNE)
