"""Data augmentation: `data.augment`'s Keras preprocessing layers, applied to training batches in tf.data.

The layers are Keras' own (RandomFlip, RandomTranslation, ..., MixUp, CutMix), called through their
`get_random_transformation` / `transform_images` / `transform_labels` API on whole batches. They run
in the input pipeline, not in the model: evaluation, predict and every export see the model alone,
and the augmentation overlaps with training on the other core.

Every random draw is stateless, seeded by (run seed, epoch, step, worker's part, call site), and
AlternatingFlip's by (run seed, image): an epoch's augmented batches depend on nothing else, so a run resumed mid-epoch sees exactly the
batches an uninterrupted run would, as the epoch's order already does. Images are float32 in
[0, 1] here (the layers' value_range is set to that); MixUp and CutMix need one-hot labels.
"""

from __future__ import annotations

from cnnctl.layers import MIXING

VALUE_RANGE = ("RandomContrast", "RandomBrightness", "RandomErasing")  # layers told the images are in [0, 1]


def mixes(augment) -> bool:
    """True when an augmentation mixes labels (MixUp, CutMix): the pipeline must give one-hot labels."""
    return any(entry.type in MIXING for entry in augment)


def names(augment) -> list[str]:
    """`RandomFlip(mode=horizontal)`, ... for summaries and logs."""
    out = []
    for entry in augment:
        args = ", ".join(f"{k}={_short(v)}" for k, v in entry.args.model_dump().items())
        out.append(f"{entry.type}({args})")
    return out


def _short(value) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def build(augment) -> list:
    """The Keras layers of `augment` (float32 whatever the precision policy: they transform inputs)."""
    import keras

    layers = []
    for entry in augment:
        kwargs = entry.args.kwargs()
        if entry.type in VALUE_RANGE:
            kwargs["value_range"] = (0.0, 1.0)
        if entry.type == "AlternatingFlip":  # its default mode is its own (horizontal), not RandomFlip's
            kwargs["mode"] = entry.args.mode
        # seed: never drawn from (make passes each batch's own seed), but without one Keras takes a seed from
        # Python's random, and the model built next would start from other weights than without augmentation.
        layers.append(getattr(keras.layers, entry.keras_class)(dtype="float32", seed=0, **kwargs))
    return layers


def _batch_seed(base):
    """A Keras SeedGenerator whose draws are stateless: call site k of a trace draws seed base + (0, k).

    Keras' random ops take a SeedGenerator (stateful) or an int; this one keeps no state, so the same
    batch (same `base`) always gets the same draws, in any process and after any resume.
    """
    import tensorflow as tf
    from keras.random import SeedGenerator

    class BatchSeed(SeedGenerator):
        def __init__(self):  # no state variable: nothing to save, nothing to advance
            self.calls = 0

        def next(self, ordered=True):
            self.calls += 1
            return base + tf.constant([0, self.calls * 1_000_003], dtype=tf.int64)

    return BatchSeed()


def _alternating_flips(images, indices, epoch, seed: int):
    """AlternatingFlip's draw in Keras' RandomFlip form: image i is flipped in epoch e when bit(seed, i) + e is
    odd, bit being a stateless hash of the image's index in the training split (so resume sees the same)."""
    import tensorflow as tf

    indices = tf.cast(indices, tf.int64)
    first = tf.cond(tf.size(indices) > 0,  # the op refuses an empty vector (a worker's empty part of a last batch)
                    lambda: tf.random.experimental.index_shuffle(indices, seed=tf.constant([seed, 0xF11B], tf.int64),
                                                                 max_index=tf.constant(2**31 - 1, tf.int64)),
                    lambda: indices)
    flips = tf.equal((first + epoch) % 2, 1)
    return {"flips": tf.reshape(flips, [-1, 1, 1, 1]), "input_shape": tf.shape(images)}


def make(augment, seed: int):
    """A graph function (images, labels, where, indices) -> (images, labels) applying `augment`, or None.

    `where` is an int64 vector (epoch, step, part) naming the batch; `indices` are its images' positions in
    the training split.
    """
    if not augment:
        return None
    import tensorflow as tf

    layers = list(zip((entry.type for entry in augment), build(augment), strict=True))

    def apply(images, labels, where, indices):
        where = tf.cast(where, tf.int64)
        base = tf.stack([tf.constant(seed, tf.int64), where[0] * 1_000_000_007 + where[1] * 1_009 + where[2]])
        generator = _batch_seed(base)
        for kind, layer in layers:
            if kind in MIXING:
                data = {"images": images, "labels": tf.cast(labels, tf.float32)}
                transformation = layer.get_random_transformation(data, training=True, seed=generator)
                labels = layer.transform_labels(data["labels"], transformation, training=True)
            elif kind == "AlternatingFlip":
                transformation = _alternating_flips(images, indices, where[0], seed)
            else:
                transformation = layer.get_random_transformation(images, training=True, seed=generator)
            images = layer.transform_images(images, transformation, training=True)
        return tf.cast(images, tf.float32), labels

    return apply
