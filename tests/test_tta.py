"""cnnctl.tta: the views of test-time augmentation, their weights, and the averaged probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl import tta


def test_the_views_and_their_weights_follow_airbench():
    assert tta.views([], 1) == [(1.0, False, 0)]
    assert tta.views(["flip"], 1) == [(0.5, False, 0), (0.5, True, 0)]
    assert tta.views(["translate"], 2) == [(0.5, False, 0), (0.25, False, 2), (0.25, False, -2)]
    both = tta.views(["translate", "flip"], 1)
    assert both == [(0.25, False, 0), (0.25, True, 0), (0.125, False, 1), (0.125, True, 1), (0.125, False, -1),
                    (0.125, True, -1)]
    assert sum(weight for weight, _, _ in both) == 1.0


def test_mirror_and_shifts_move_pixels_as_documented():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)  # row r, column c holds 4r + c
    plain = image[0, :, :, 0]
    np.testing.assert_array_equal(np.asarray(tta.transform(image, True, 0))[0, :, :, 0], plain[:, ::-1])
    down_right = np.asarray(tta.transform(image, False, 1))[0, :, :, 0]
    np.testing.assert_array_equal(down_right[1:, 1:], plain[:3, :3])  # output (i, j) is input (i - 1, j - 1)
    np.testing.assert_array_equal(down_right[0, 1:], plain[1, :3])  # the new top row reflects row 1
    up_left = np.asarray(tta.transform(image, False, -1))[0, :, :, 0]
    np.testing.assert_array_equal(up_left[:3, :3], plain[1:, 1:])
    np.testing.assert_array_equal(up_left[3, :3], plain[2, 1:])  # the new bottom row reflects row 2
    both = np.asarray(tta.transform(image, True, 1))[0, :, :, 0]  # mirrored first, then shifted
    np.testing.assert_array_equal(both[1:, 1:], plain[:3, ::-1][:, :3])
    gray = np.asarray(tta.transform(image[..., 0], True, -1))  # (N, H, W) images too
    assert gray.shape == (1, 4, 4)


@pytest.fixture(scope="module")
def mirror_sensitive(keras_module):
    """A model whose probabilities depend on where the bright pixels are: left-heavy images say class 0."""
    keras = keras_module
    inputs = keras.Input((4, 4, 1))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(
        np.array([[4.0, -4.0] if column < 2 else [-4.0, 4.0] for _ in range(4) for column in range(4)])))
    return keras.Model(inputs, keras.layers.Softmax()(dense(flat)))


def dataset_of(images):
    from cnnctl.data import make_dataset

    return make_dataset(images, np.zeros(len(images), np.uint8), batch_size=3, num_classes=2, one_hot=False)


def test_a_symmetric_image_gets_the_same_probabilities_with_the_flip_view(mirror_sensitive):
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (5, 4, 2, 1), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    plain, averaged = tta.predict(mirror_sensitive, dataset_of(symmetric), ["flip"], 1)
    np.testing.assert_array_equal(averaged, plain)
    lopsided = symmetric.copy()
    lopsided[:, :, :2] = 255  # bright on the left: class 0, and class 1 in the mirror
    plain, averaged = tta.predict(mirror_sensitive, dataset_of(lopsided), ["flip"], 1)
    assert (plain[:, 0] > 0.99).all()
    np.testing.assert_allclose(averaged, 0.5 * plain + 0.5 * plain[:, ::-1], atol=1e-6)


def test_the_average_is_over_every_view_in_one_pass_each(mirror_sensitive):
    x = np.random.default_rng(1).integers(0, 256, (7, 4, 4, 1), dtype=np.uint8)
    plain, averaged = tta.predict(mirror_sensitive, dataset_of(x), ["flip", "translate"], 1)
    images = x.astype(np.float32) / 255.0
    expected = sum(weight * np.asarray(mirror_sensitive(tta.transform(images, mirrored, shift)))
                   for weight, mirrored, shift in tta.views(["flip", "translate"], 1))
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    np.testing.assert_allclose(plain, np.asarray(mirror_sensitive(images)), atol=1e-6)
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-6)
    assert averaged.shape == (7, 2) and averaged.dtype == np.float64
