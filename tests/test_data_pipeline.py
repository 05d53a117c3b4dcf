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


def all_batches(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(dataset.as_numpy_iterator())


def test_a_memory_mapped_array_gives_the_batches_the_array_in_memory_gives(tmp_path):
    """The image cache is read through a memory map (MapReader): the same batches, in the same seeded order."""
    rng = np.random.default_rng(0)
    x = aligned(rng.integers(0, 256, (37, 4, 3, 2), dtype=np.uint8))
    y = aligned(rng.integers(0, 3, 37).astype(np.uint8))
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    for one_hot in (False, True):
        kwargs = {"batch_size": 8, "num_classes": 3, "one_hot": one_hot}
        in_memory, from_map = (all_batches(data.make_dataset(a, y, **kwargs)) for a in (x, mapped))
        assert len(from_map) == 5 and len(from_map[-1][0]) == 5
        for (xa, ya), (xb, yb) in zip(in_memory, from_map, strict=True):
            assert xb.dtype == np.float32 and np.array_equal(xa, xb) and np.array_equal(ya, yb)
        epochs = {**kwargs, "shuffle": True, "seed": 3, "epochs": 2}
        in_memory, from_map = (all_batches(data.make_epoch_dataset(a, y, **epochs)) for a in (x, mapped))
        assert len(from_map) == 10
        for (xa, ya), (xb, yb) in zip(in_memory, from_map, strict=True):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        resumed = all_batches(data.make_epoch_dataset(mapped, y, **{**epochs, "epochs": 1}, start_epoch=1, skip_steps=2))
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(from_map[7:], resumed, strict=True))
    spec = data.make_epoch_dataset(mapped, y, batch_size=8, num_classes=3, one_hot=False, shuffle=False, seed=0,
                                   epochs=1).element_spec
    assert tuple(spec[0].shape) == (None, 4, 3, 2)  # the static shape Keras builds the model with


@pytest.mark.parametrize(("workers", "replicas"), [(2, 1), (3, 1), (2, 2)])
def test_a_worker_reads_its_contiguous_part_of_every_global_batch(workers, replicas):
    """Multi-worker sharding: each worker's pipeline yields, per global batch, its replicas' parts (np.array_split
    of the batch, worker 0's replicas first), so across the workers every example of an epoch is used once."""
    x = aligned(np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1))
    y = aligned(np.arange(10, dtype=np.uint8) % 2)
    whole = epoch_batches(x, y, shuffle=True, seed=7, epochs=2)  # batches of 4, 4, 2 per epoch
    parts = workers * replicas
    for worker in range(workers):
        share = epoch_batches(x, y, shuffle=True, seed=7, epochs=2, shard=(worker, workers, replicas))
        mine = slice(worker * replicas, (worker + 1) * replicas)
        assert share == [part.tolist() for batch in whole for part in np.array_split(batch, parts)[mine]]
        assert len(share) == len(whole) * replicas  # the same number of steps on every worker, empty parts included
        resumed = epoch_batches(x, y, shuffle=True, seed=7, start_epoch=1, skip_steps=1, epochs=1,
                                shard=(worker, workers, replicas))
        assert resumed == share[4 * replicas:]  # skip_steps counts global steps


# ---------------------------------------------------------------- with data.augment: draws named by (epoch, step, part)

AUGMENT = [{"RandomFlip": {}}, {"RandomTranslation": {"height_factor": 0.3, "width_factor": 0.3}},
           {"RandomContrast": {"factor": 0.5}}, {"MixUp": {}}, {"CutMix": {}}]


def augmented(x, y, seed=7, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    from cnnctl import augment
    from cnnctl.schema import DataConfig

    apply = augment.make(DataConfig(dataset="synthetic", augment=AUGMENT).augment, seed)
    return all_batches(data.make_epoch_dataset(x, y, batch_size=4, num_classes=2, one_hot=True, shuffle=True,
                                               seed=seed, augment=apply, **kwargs))


def equal(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1])
                                    for p, q in zip(a, b, strict=True))


def test_an_augmented_epoch_resumed_mid_way_is_the_tail_of_the_uninterrupted_one():
    rng = np.random.default_rng(1)
    x = aligned(rng.integers(0, 256, (10, 6, 6, 1), dtype=np.uint8))
    y = aligned(np.arange(10, dtype=np.uint8) % 2)
    whole = augmented(x, y, epochs=3)  # batches of 4, 4, 2 per epoch
    assert len(whole) == 9 and equal(whole, augmented(x, y, epochs=3))
    assert equal(augmented(x, y, start_epoch=1, skip_steps=1, epochs=2), whole[4:])
    assert equal(augmented(x, y, start_epoch=2, epochs=1), whole[6:])
    assert not np.allclose(augmented(x, y, seed=8, epochs=1)[0][0], whole[0][0])


def test_each_part_of_a_global_batch_draws_its_own_augmentation():
    # Ten copies of one image: without the part in the seed, two parts of a batch would be augmented alike.
    x = aligned(np.repeat(np.random.default_rng(2).integers(0, 256, (1, 6, 6, 1), dtype=np.uint8), 10, axis=0))
    y = aligned(np.zeros(10, np.uint8))
    both = augmented(x, y, epochs=2, shard=(0, 1, 2))  # one worker with two replicas: parts 0 and 1 in turn
    assert len(both) == 12
    for first, second in zip(both[0::2], both[1::2], strict=True):
        assert not np.allclose(first[0], second[0])
    # What a part gets depends on its number among all parts, not on which worker or replica reads it.
    assert equal(augmented(x, y, epochs=2, shard=(0, 2, 1)), both[0::2])
    assert equal(augmented(x, y, epochs=2, shard=(1, 2, 1)), both[1::2])
    assert equal(augmented(x, y, start_epoch=1, skip_steps=1, epochs=1, shard=(1, 2, 1)), both[1::2][4:])
