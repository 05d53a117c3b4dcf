"""cnnctl.data.pipeline: uint8 arrays to batches of scaled images and labels, read in place."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl import data
from cnnctl.data.memory import aligned
from cnnctl.errors import DataError


def test_make_dataset_scales_per_batch_from_uint8():
    x = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1) * 6
    y = np.arange(10, dtype=np.uint8) % 3
    sparse = data.make_dataset(x, y, batch_size=4, num_classes=3, one_hot=False)
    batches = list(sparse.as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    assert np.allclose(images, x[:4] / 255.0) and labels.dtype == np.int32 and list(labels) == [0, 1, 2, 0]
    hot = data.make_epoch_dataset(x, y, batch_size=4, num_classes=3, one_hot=True, shuffle=True, seed=1, epochs=1)
    hot_batches = list(hot.as_numpy_iterator())[:2]
    assert hot_batches[0][1].shape == (4, 3)
    for images, labels in hot_batches:  # image i starts with the value 24 * i; its label is i % 3
        index = np.rint(images[:, 0, 0, 0] * 255 / 24).astype(int)
        assert np.array_equal(labels.argmax(1), index % 3) and np.array_equal(labels.sum(1), np.ones(4))
    again = list(data.make_epoch_dataset(x, y, batch_size=4, num_classes=3, one_hot=True, shuffle=True, seed=1,
                                         epochs=1).as_numpy_iterator())[:2]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(hot_batches, again, strict=True))
    with pytest.raises(DataError, match="uint8"):
        data.make_dataset(x.astype(np.float32), y, batch_size=4, num_classes=3, one_hot=False)


@pytest.mark.parametrize("make", ["make_dataset", "make_epoch_dataset"])
def test_pipelines_read_the_aligned_arrays_in_place(make):
    """No copy of the images for TensorFlow: a change to the array shows in the next batch."""
    x = aligned(np.zeros((8, 2, 2, 1), dtype=np.uint8))
    y = aligned(np.arange(8, dtype=np.uint8) % 2)
    extra = {} if make == "make_dataset" else {"shuffle": False, "seed": 0, "epochs": 1}
    dataset = getattr(data, make)(x, y, batch_size=8, num_classes=2, one_hot=False, **extra)
    x[3] = 255
    images, labels = next(iter(dataset.as_numpy_iterator()))
    assert images[3].min() == 1.0 and images[2].max() == 0.0 and list(labels) == [0, 1] * 4


def epoch_batches(x, y, **kwargs) -> list[list[int]]:
    """The image values (0..255) of each batch of make_epoch_dataset(x, y, batch_size=4, ...)."""
    dataset = data.make_epoch_dataset(x, y, batch_size=4, num_classes=2, one_hot=False, **kwargs)
    return [np.rint(images[:, 0, 0, 0] * 255).astype(int).tolist() for images, _ in dataset.as_numpy_iterator()]


def test_each_epoch_is_a_seeded_permutation_that_a_resume_can_pick_up():
    x = aligned(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1))
    y = aligned(np.arange(10, dtype=np.uint8) % 2)
    assert epoch_batches(x, y, shuffle=False, seed=7, epochs=1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    whole = epoch_batches(x, y, shuffle=True, seed=7, epochs=3)
    assert [len(b) for b in whole] == [4, 4, 2] * 3  # a batch never straddles two epochs
    epochs = [sum(whole[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(e) == list(range(10)) for e in epochs) and len({tuple(e) for e in epochs}) == 3
    assert epoch_batches(x, y, shuffle=True, seed=7, epochs=3) == whole
    assert epoch_batches(x, y, shuffle=True, seed=8, epochs=3) != whole
    assert epoch_batches(x, y, shuffle=True, seed=7, start_epoch=1, skip_steps=1, epochs=2) == whole[4:]
