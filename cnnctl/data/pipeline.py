"""tf.data pipelines from uint8 arrays: batches are gathered, scaled (and one-hot encoded) per batch.

The arrays are never copied into TensorFlow: each pipeline is a dataset of index batches, and a
batch's images are gathered from a tensor that reads the numpy array in place (`memory.host_tensor`).
"""

from __future__ import annotations

import numpy as np

from cnnctl.data.memory import host_tensor
from cnnctl.errors import DataError


def _gather_and_scale(x, y, num_classes: int, one_hot: bool):
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    images, labels = host_tensor(x), host_tensor(y)

    def batch(indices):
        batch_images = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
        batch_labels = tf.gather(labels, indices)
        batch_labels = tf.one_hot(batch_labels, num_classes) if one_hot else tf.cast(batch_labels, tf.int32)
        return batch_images, batch_labels

    return batch


def _finish(index_batches, batch):
    import tensorflow as tf

    dataset = index_batches.map(batch, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # same seed, same batches: runs must be reproducible
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool):
    """Batches of (float32 images in [0, 1], int32 or one-hot labels) from uint8 arrays, in order.

    For evaluation and prediction; training batches come from `make_epoch_dataset`.
    """
    import tensorflow as tf

    batch = _gather_and_scale(x, y, num_classes, one_hot)
    return _finish(tf.data.Dataset.range(len(x)).batch(batch_size), batch)


def make_epoch_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool, shuffle: bool, seed: int,
                       start_epoch: int = 0, skip_steps: int = 0, epochs: int | None = None):
    """Training batches, epoch after epoch, where epoch e is a permutation seeded by (seed, e).

    The order of any epoch depends only on the seed and the epoch number, never on how many
    epochs this process has run: a run resumed at epoch e, step k (`start_epoch`, `skip_steps`)
    sees exactly the batches an uninterrupted run would. Batches never straddle two epochs.
    `epochs` None repeats forever (use with fit's steps_per_epoch).
    """
    import tensorflow as tf

    batch = _gather_and_scale(x, y, num_classes, one_hot)
    count = len(x)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    last = start_epoch + epochs if epochs is not None else 2**62
    index_batches = tf.data.Dataset.range(start_epoch, last).flat_map(epoch_batches).skip(skip_steps)
    return _finish(index_batches, batch)
