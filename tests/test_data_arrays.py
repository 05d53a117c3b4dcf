"""cnnctl.data.arrays: seeded synthetic data, npz files, the seeded validation split, and the checks of
image shapes and class counts every source goes through (all loaded through `data.load_splits`)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load, write_mnist

from cnnctl.data import arrays
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

pytestmark = pytest.mark.usefixtures("isolated")


# ---------------------------------------------------------------- synthetic data


def test_synthetic_is_seeded_uint8_of_the_input_shape():
    a = load(num_classes=4, seed=3)
    b = load(num_classes=4, seed=3)
    c = load(num_classes=4, seed=4)
    assert a.x_train.shape == (512, 8, 8, 3) and a.x_test.shape == (128, 8, 8, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.uint8 and a.y_train.shape == (512,)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_val is None and a.class_names == ["0", "1", "2", "3"]
    assert a.identity["dataset"] == "synthetic" and a.identity["seed"] == 3
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3}


def test_synthetic_is_learnable():
    """Nearest class mean, fitted on train, beats chance on test by far."""
    s = load(num_classes=10, input_shape=(6, 6, 1), seed=1)
    x_train, x_test = s.x_train.reshape(512, -1).astype(float), s.x_test.reshape(128, -1).astype(float)
    means = np.stack([x_train[s.y_train == k].mean(axis=0) for k in range(10)])
    predicted = np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == s.y_test).mean() > 0.5


def test_synthetic_needs_a_class_count():
    with pytest.raises(DataError, match="number of classes"):
        load()


# ---------------------------------------------------------------- the validation split


def test_validation_split_is_a_seeded_random_part():
    full = load(num_classes=3, seed=5)
    a = load(num_classes=3, seed=5, validation="split", split=0.25)
    b = load(num_classes=3, seed=5, validation="split", split=0.25)
    assert (len(a.x_train), len(a.x_val)) == (384, 128)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    # not Keras' last 25%: a random part, and together the two parts are the whole training set
    assert not np.array_equal(a.x_val, full.x_train[-128:])
    rows = {r.tobytes() for r in full.x_train}
    parts = {r.tobytes() for r in a.x_train} | {r.tobytes() for r in a.x_val}
    assert parts == rows
    assert np.array_equal(np.bincount(np.concatenate([a.y_train, a.y_val])), np.bincount(full.y_train))
    assert a.identity["train_examples"] == 384 and a.identity["val_examples"] == 128


def test_split_holds_out_as_many_as_keras_and_keeps_the_order():
    x = np.arange(10)
    x_train, y_train, x_val, y_val = arrays.split(x, x * 10, 0.25, seed=0)
    assert len(x_val) == 10 - int(10 * 0.75) == 3  # keras' count, rounded the same way
    assert list(x_val) == sorted(x_val) and list(x_train) == sorted(x_train)
    assert sorted([*x_train, *x_val]) == list(range(10)) and list(y_val) == [v * 10 for v in x_val]
    assert len(arrays.split(np.arange(7), np.arange(7), 0.2, seed=0)[2]) == 7 - int(7 * 0.8) == 2


# ---------------------------------------------------------------- shapes and classes


def test_wrong_input_shape_and_class_count_are_reported(tmp_path):
    write_mnist(tmp_path / "mnist.npz")
    with pytest.raises(DataError, match=r"\[28, 28\].*\[32, 32, 3\]"):
        load("mnist", input_shape=(32, 32, 3), data_dir=tmp_path)
    with pytest.raises(DataError, match="12 outputs.*10 classes"):
        load("mnist", input_shape=(28, 28, 1), num_classes=12, data_dir=tmp_path)
    with pytest.raises(DataError, match="class_names has 2"):
        load("mnist", input_shape=(28, 28, 1), data_dir=tmp_path, class_names=["a", "b"])
    assert load("mnist", input_shape=(784,), data_dir=tmp_path).x_train.shape == (5, 784)


# ---------------------------------------------------------------- npz


def test_npz_dataset(tmp_path):
    x = np.zeros((6, 5, 5, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.array([[0], [1], [2], [0], [1], [2]]), x_test=x[:2],
             y_test=np.array([1, 2]))
    s = load("npz", input_shape=(5, 5, 3), root=str(tmp_path / "d.npz"), validation="split", split=0.5)
    assert s.class_names == ["0", "1", "2"] and len(s.x_train) == 3 and s.y_train.ndim == 1
    named = load("npz", input_shape=(5, 5, 3), data_dir=tmp_path, root="d.npz", class_names=["a", "b", "c"])
    assert named.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match="3 outputs but npz has 2 classes"):
        load("npz", input_shape=(5, 5, 3), root=str(tmp_path / "d.npz"), num_classes=3, class_names=["a", "b"])
    with pytest.raises(DataError, match=r"0\.\.1 \(2 classes\), found 0\.\.2"):
        load("npz", input_shape=(5, 5, 3), root=str(tmp_path / "d.npz"), class_names=["a", "b"])
    np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32), y_train=np.zeros(6, int), x_test=x, y_test=[0, 0])
    with pytest.raises(DataError, match=r"f\.npz: x_train must be uint8"):
        load("npz", input_shape=(5, 5, 3), root=str(tmp_path / "f.npz"))
    with pytest.raises(DataError, match="npz file"):
        load("npz", input_shape=(5, 5, 3), root=str(tmp_path / "missing.npz"))


def test_npz_arrays_of_different_lengths_are_named(tmp_path):
    x = np.zeros((100, 5, 5, 1), np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(90, np.uint8), x_test=x[:4], y_test=np.zeros(4, int))
    with pytest.raises(DataError, match=r"d\.npz: x_train has 100 images but y_train has 90 labels$"):
        load("npz", input_shape=(5, 5, 1), root=str(tmp_path / "d.npz"))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(100, np.uint8), x_test=x[:1], y_test=np.zeros(2, int))
    with pytest.raises(DataError, match=r"d\.npz: x_test has 1 image but y_test has 2 labels$"):
        load("npz", input_shape=(5, 5, 1), root=str(tmp_path / "d.npz"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_npz_without_examples_says_the_split_is_empty(tmp_path, split):
    x, y = np.zeros((4, 5, 5, 1), np.uint8), np.zeros(4, np.uint8)
    arrays = {"x_train": x, "y_train": y, "x_test": x, "y_test": y, f"x_{split}": x[:0], f"y_{split}": y[:0]}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as info:  # it said "the model has 3 outputs but npz has 1 classes"
        load("npz", input_shape=(5, 5, 1), root=str(tmp_path / "d.npz"), num_classes=3)
    assert str(info.value) == (f"{tmp_path / 'd.npz'}: the {split} split is empty "
                               f"(x_{split} and y_{split} hold no examples)")


def test_counts_in_data_messages_agree_with_their_nouns(tmp_path):
    x = np.zeros((3, 5, 5, 1), np.uint8)
    np.savez(tmp_path / "one.npz", x_train=x, y_train=np.zeros(3, np.uint8), x_test=x, y_test=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"the model has 3 outputs but npz has 1 class$"):
        load("npz", input_shape=(5, 5, 1), root=str(tmp_path / "one.npz"), num_classes=3)
    one_class = arrays.Splits(x, np.zeros(3, np.uint8), None, None, x, np.zeros(3, np.uint8), ["0"], {"dataset": "npz"})
    with pytest.raises(DataError, match=r"data.class_names has 2 names but there is 1 class$"):
        arrays.check_classes(DataConfig(dataset="npz", class_names=["a", "b"]), one_class, None)
    np.savez(tmp_path / "few.npz", x_train=x, x_test=x)
    with pytest.raises(DataError, match=r"few\.npz: no y_train, y_test arrays \(it has x_train, x_test\)$"):
        load("npz", input_shape=(5, 5, 1), root=str(tmp_path / "few.npz"))
    with pytest.raises(DataError, match="of 1 training example leaves an empty part"):
        arrays.split(np.zeros(1), np.zeros(1), 0.5, seed=0)
