"""tf.data pipelines from uint8 arrays: batches are gathered, scaled (and one-hot encoded) per batch.

The arrays are never copied into TensorFlow: each pipeline is a dataset of index batches. A batch's
images are gathered from a tensor that reads the numpy array in place (`memory.host_tensor`), or,
for an array memory-mapped from the image cache (`np.memmap`), copied out of the map by numpy
(`memory.MapReader`, which keeps the process's resident memory bounded whatever the file's size).
"""

from __future__ import annotations

import numpy as np

from cnnctl.data.memory import MapReader, host_tensor
from cnnctl.errors import DataError


def _images(x):
    """indices -> uint8 images of `x`, a graph function over an in-memory tensor or a memory map."""
    import tensorflow as tf

    if isinstance(x, np.memmap):
        reader = MapReader(x)

        def gather(indices):
            images = tf.numpy_function(reader.gather, [indices], tf.uint8, stateful=False)
            return tf.ensure_shape(images, (None, *x.shape[1:]))

        return gather
    images = host_tensor(x)
    return lambda indices: tf.gather(images, indices)


def _gather_and_scale(x, y, num_classes: int, one_hot: bool):
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    gather_images, labels = _images(x), host_tensor(np.ascontiguousarray(y))

    def batch(indices):
        batch_images = tf.cast(gather_images(indices), tf.float32) / 255.0
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
                       start_epoch: int = 0, skip_steps: int = 0, epochs: int | None = None,
                       shard: tuple[int, int, int] | None = None, augment=None):
    """Training batches, epoch after epoch, where epoch e is a permutation seeded by (seed, e).

    The order of any epoch depends only on the seed and the epoch number, never on how many
    epochs this process has run: a run resumed at epoch e, step k (`start_epoch`, `skip_steps`)
    sees exactly the batches an uninterrupted run would. Batches never straddle two epochs.
    `epochs` None repeats forever (use with fit's steps_per_epoch).

    `shard` (worker, workers, replicas per worker) makes this one worker's pipeline of a
    multi-worker run: see `_worker_share`. `batch_size` and `skip_steps` stay global.
    `augment` (augment.make's function) transforms each batch, seeded by (epoch, step, part) and its indices.
    """
    import tensorflow as tf

    gather = _gather_and_scale(x, y, num_classes, one_hot)
    count = len(x)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        steps = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return steps.map(lambda step, indices: (indices, tf.stack([epoch, step, tf.constant(0, tf.int64)])))

    def batch(indices, where):
        images, labels = gather(indices)
        return augment(images, labels, where, indices) if augment is not None else (images, labels)

    last = start_epoch + epochs if epochs is not None else 2**62
    index_batches = tf.data.Dataset.range(start_epoch, last).flat_map(epoch_batches).skip(skip_steps)
    if shard is not None:
        index_batches = _worker_share(index_batches, *shard)
    return _finish(index_batches, batch)


def _worker_share(index_batches, worker: int, workers: int, replicas: int = 1):
    """Worker `worker`'s share of every global batch of indices, before anything is gathered.

    Each global batch is split into `workers * replicas` contiguous parts, one per replica in
    the order of `tf.distribute` (worker 0's replicas first); the worker yields its `replicas`
    parts one after the other (what `distribute_datasets_from_function` expects), so it reads
    only those images. A global batch divisible by the number of replicas gives equal parts;
    a smaller last batch of an epoch is split as evenly as possible (`np.array_split`: the
    first n % parts parts get one more), and when it has fewer examples than there are
    replicas the last replicas get an empty batch. Either way every example of an epoch is
    used exactly once across the workers, and every worker runs the same number of steps.
    """
    import tensorflow as tf

    parts, first = workers * replicas, worker * replicas

    def share(indices, where):
        size = tf.size(indices, out_type=tf.int64)

        def start(part):  # where part `part` (an int64 tensor) begins
            return part * (size // parts) + tf.minimum(part, size % parts)

        def part_of(part):  # the part's indices, and (epoch, step, part) naming it for augmentation seeds
            return indices[start(part):start(part + 1)], tf.tensor_scatter_nd_update(where, [[2]], [part])

        return tf.data.Dataset.range(first, first + replicas).map(part_of)

    return index_batches.flat_map(share)
