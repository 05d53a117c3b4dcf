"""Test-time augmentation (`evaluate.tta`): a model's probabilities on views of each test image, averaged.

The views follow airbench94's test-time augmentation (Keller Jordan, github.com/KellerJordan/cifar10-airbench):
`flip` weighs the image and its mirror image equally; `translate` gives the image half the weight and two
copies shifted by `translate_pixels` in both axes, one down-right and one up-left, a quarter each, their
borders filled by reflection; with both, each of the six combinations gets the product of its weights.
Unlike airbench, which averages logits, cnnctl averages probabilities (a model's outputs after
`model.probability_model`): the only outputs a model ending in a softmax has, and the same result for a
model whichever way its last layer is written.

Each view is one `model.predict` pass over the test batches, transformed in the input pipeline by batched
TensorFlow ops.
"""

from __future__ import annotations

import numpy as np

VIEWS = ("flip", "translate")


def views(names: list[str], pixels: int) -> list[tuple[float, bool, int]]:
    """(weight, mirrored, shift) of every view of `names`; the weights sum to 1 and the image as it is comes
    first. A shift s > 0 moves the content s pixels down and right, s < 0 up and left."""
    mirrors = [False, True] if "flip" in names else [False]
    shifts = [(0, 0.5), (pixels, 0.25), (-pixels, 0.25)] if "translate" in names else [(0, 1.0)]
    return [(weight / len(mirrors), mirrored, shift) for shift, weight in shifts for mirrored in mirrors]


def transform(images, mirrored: bool, shift: int):
    """A batch of images (N, H, W) or (N, H, W, C) mirrored left to right, then shifted by `shift` pixels in
    both axes with the border reflected (the uncovered rows and columns mirror their neighbours)."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    if mirrored:
        images = tf.reverse(images, axis=[2])
    if shift:
        pixels, (height, width) = abs(shift), images.shape[1:3]
        padding = [[0, 0], [pixels, pixels], [pixels, pixels]] + [[0, 0]] * (len(images.shape) - 3)
        padded = tf.pad(images, padding, mode="REFLECT")
        start = 0 if shift > 0 else 2 * pixels  # output (i, j) is input (i - shift, j - shift)
        images = padded[:, start:start + height, start:start + width]
    return images


def predict(model, dataset, names: list[str], pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """(the probabilities of the images as they are, their weighted mean over the views), both (N, classes)
    in float64. `dataset` yields batches of (images, labels) in a fixed order, as data.make_dataset does."""
    plain = averaged = None
    for weight, mirrored, shift in views(names, pixels):
        shown = dataset if not (mirrored or shift) else \
            dataset.map(lambda images, labels, m=mirrored, s=shift: transform(images, m, s))
        probabilities = np.asarray(model.predict(shown, verbose=0), dtype=np.float64)
        plain = probabilities if plain is None else plain
        averaged = weight * probabilities if averaged is None else averaged + weight * probabilities
    return plain, averaged
