"""cnnctl.data: every dataset source on tiny files made here, plus the real MNIST file if present."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASETS

from cnnctl import data
from cnnctl.data import builtin, folders
from cnnctl.data.memory import ALIGNMENT, aligned, host_tensor
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

DEBIAN = builtin.DEBIAN_FASHION_MNIST  # the real one: the fixture below replaces the module constant


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real ~/.keras, $CNNCTL_DATA, Debian folder or network: only what a test puts in place."""
    monkeypatch.setenv("CNNCTL_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CNNCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNCTL_DATA", raising=False)
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def load(dataset="synthetic", *, input_shape=(8, 8, 3), num_classes=None, validation="none", split=0.25,
         seed=0, data_dir=None, smoke=False, **config):
    config = DataConfig(dataset=dataset, **config)
    return data.load_splits(config, input_shape=list(input_shape), num_classes=num_classes, validation=validation,
                            validation_split=split, seed=seed, data_dir=data_dir, synthetic=smoke)


# ---------------------------------------------------------------- synthetic data and validation modes


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


def test_smoke_flag_replaces_any_dataset_with_synthetic_data(tmp_path):
    s = load("mnist", input_shape=(28, 28, 1), num_classes=10, smoke=True, data_dir=tmp_path)
    assert s.identity["dataset"] == "synthetic" and s.x_train.shape == (512, 28, 28, 1)


def test_synthetic_needs_a_class_count():
    with pytest.raises(DataError, match="number of classes"):
        load()


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


def test_validation_test_uses_the_test_arrays_without_a_copy():
    s = load(num_classes=2, validation="test")
    assert s.x_val is s.x_test and s.y_val is s.y_test
    assert s.identity["val_examples"] == 128


def test_unknown_validation_mode_and_empty_split():
    with pytest.raises(DataError, match="validation"):
        load(num_classes=2, validation="holdout")
    with pytest.raises(DataError, match="empty"):
        load(num_classes=2, validation="split", synthetic={"train_examples": 1})


# ---------------------------------------------------------------- mnist


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "mnist.npz").is_file(), reason=f"no {SHARED_DATASETS / 'mnist.npz'}")
def test_mnist_from_the_real_file():
    s = load("mnist", input_shape=(28, 28, 1), num_classes=10, data_dir=SHARED_DATASETS)
    assert s.x_train.shape == (60000, 28, 28, 1) and s.x_test.shape == (10000, 28, 28, 1)
    assert s.x_train.dtype == np.uint8 and s.y_train.dtype == np.uint8
    assert list(np.bincount(s.y_test)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert s.class_names == [str(i) for i in range(10)]
    (record,) = s.identity["files"]
    assert record["sha256"] == "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
    assert record["bytes"] == 11490434 and s.identity["num_classes"] == 10


def write_mnist(path: Path, n=5, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 28, 28), value, np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    np.savez(path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    return path


def test_search_order_data_dir_then_cnnctl_data_then_keras_cache(tmp_path, monkeypatch):
    write_mnist(tmp_path / "keras" / "datasets" / "mnist.npz", value=3)
    assert load("mnist", input_shape=(28, 28, 1)).x_train[0, 0, 0, 0] == 3
    write_mnist(tmp_path / "env" / "mnist.npz", value=2)
    monkeypatch.setenv("CNNCTL_DATA", str(tmp_path / "env"))
    assert load("mnist", input_shape=(28, 28, 1)).x_train[0, 0, 0, 0] == 2
    write_mnist(tmp_path / "root" / "mnist.npz", value=1)
    assert load("mnist", input_shape=(28, 28, 1), root=str(tmp_path / "root")).x_train[0, 0, 0, 0] == 1
    write_mnist(tmp_path / "cli" / "mnist.npz", value=0)
    s = load("mnist", input_shape=(28, 28, 1), root=str(tmp_path / "root"), data_dir=tmp_path / "cli")
    assert s.x_train[0, 0, 0, 0] == 0
    assert s.identity["files"][0]["path"] == str(tmp_path / "cli" / "mnist.npz")


def test_keras_home_unset_means_home_keras(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME")
    write_mnist(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz")
    assert load("mnist", input_shape=(28, 28)).x_train.shape == (5, 28, 28)


def test_missing_data_lists_the_files_and_places_quickly(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path / "mine")
    assert time.monotonic() - started < 10
    message = str(info.value)
    for text in ("cifar-10-batches-py/", "data_batch_1..5", "test_batch", "cifar-10-python.tar.gz", "--data-dir",
                 str(tmp_path / "mine"), str(tmp_path / "keras" / "datasets"), "CNNCTL_OFFLINE"):
        assert text in message


def test_missing_data_without_network_fails_fast(monkeypatch):
    monkeypatch.delenv("CNNCTL_OFFLINE")
    monkeypatch.setitem(data.BUILTINS, "mnist", dataclasses.replace(data.BUILTINS["mnist"], host="127.0.0.1"))
    monkeypatch.setattr(builtin, "NETWORK_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(DataError, match=r"mnist\.npz.*No network"):
        load("mnist", input_shape=(28, 28, 1))
    assert time.monotonic() - started < 10


def test_download_goes_to_the_keras_cache_then_is_found(tmp_path, monkeypatch):
    import keras

    monkeypatch.delenv("CNNCTL_OFFLINE")
    monkeypatch.setattr(builtin, "_reachable", lambda host, timeout: True)
    monkeypatch.setattr(keras.datasets.mnist, "load_data",
                        lambda: write_mnist(tmp_path / "keras" / "datasets" / "mnist.npz"))
    assert load("mnist", input_shape=(28, 28, 1)).x_train.shape == (5, 28, 28, 1)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: 1 / 0)
    with pytest.raises(DataError, match="Downloading it failed"):
        load("cifar10", input_shape=(32, 32, 3))


def test_truncated_npz_names_the_file(tmp_path):
    good = write_mnist(tmp_path / "good" / "mnist.npz").read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mnist.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"bad/mnist\.npz"):
        load("mnist", input_shape=(28, 28, 1), data_dir=tmp_path / "bad")


def test_wrong_input_shape_and_class_count_are_reported(tmp_path):
    write_mnist(tmp_path / "mnist.npz")
    with pytest.raises(DataError, match=r"\[28, 28\].*\[32, 32, 3\]"):
        load("mnist", input_shape=(32, 32, 3), data_dir=tmp_path)
    with pytest.raises(DataError, match="12 outputs.*10 classes"):
        load("mnist", input_shape=(28, 28, 1), num_classes=12, data_dir=tmp_path)
    with pytest.raises(DataError, match="class_names has 2"):
        load("mnist", input_shape=(28, 28, 1), data_dir=tmp_path, class_names=["a", "b"])
    assert load("mnist", input_shape=(784,), data_dir=tmp_path).x_train.shape == (5, 784)


# ---------------------------------------------------------------- fashion_mnist (IDX)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, n_train=4, n_test=2):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    y = np.arange(n_train + n_test, dtype=np.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", x[:n_train], 0x803)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y[:n_train], 0x801)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x[n_train:], 0x803)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y[n_train:], 0x801)
    return x, y


@pytest.mark.parametrize("subfolder", ["", "fashion-mnist"])
def test_fashion_mnist_from_idx_files(tmp_path, subfolder):
    x, y = write_fashion(tmp_path / subfolder)
    s = load("fashion_mnist", input_shape=(28, 28, 1), num_classes=10, data_dir=tmp_path)
    assert s.x_train.shape == (4, 28, 28, 1) and s.x_train.dtype == np.uint8
    assert np.array_equal(s.x_train[..., 0], x[:4]) and np.array_equal(s.x_test[..., 0], x[4:])
    assert list(s.y_train) == [0, 1, 2, 3] and list(s.y_test) == [4, 5]
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"
    assert len(s.identity["files"]) == 4 and all(len(f["sha256"]) == 64 for f in s.identity["files"])


@pytest.mark.slow
@pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(), reason="no Debian fashion-mnist")
def test_fashion_mnist_from_the_real_debian_files():
    s = load("fashion_mnist", input_shape=(28, 28, 1), num_classes=10, data_dir=DEBIAN)
    assert s.x_train.shape == (60000, 28, 28, 1) and s.x_test.shape == (10000, 28, 28, 1)
    assert list(np.bincount(s.y_train)) == [6000] * 10 and list(np.bincount(s.y_test)) == [1000] * 10
    with gzip.open(DEBIAN / "t10k-images-idx3-ubyte.gz") as f:  # the Keras reader: frombuffer at offset 16
        expected = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    assert np.array_equal(s.x_test[..., 0], expected)


def test_fashion_mnist_debian_folder_is_searched_last(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", debian)
    assert data.search_places("fashion_mnist")[-1] == ("Debian dataset-fashion-mnist", debian)
    assert all(place != debian for _, place in data.search_places("mnist"))
    write_fashion(debian)
    assert load("fashion_mnist", input_shape=(28, 28, 1)).x_train.shape == (4, 28, 28, 1)
    assert data.find_builtin_files("fashion_mnist")[0] == debian / "train-images-idx3-ubyte.gz"


def test_fashion_mnist_corrupt_files_name_the_file(tmp_path):
    write_fashion(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(4, np.uint8), 0x803)  # an image magic on a label file
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        load("fashion_mnist", input_shape=(28, 28, 1), data_dir=tmp_path)
    with gzip.open(labels, "wb") as f:  # the header says 4 labels, the file holds 3
        f.write(struct.pack(">II", 0x801, 4) + bytes(3))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*4 bytes"):
        load("fashion_mnist", input_shape=(28, 28, 1), data_dir=tmp_path)
    labels.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        load("fashion_mnist", input_shape=(28, 28, 1), data_dir=tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_fashion(tmp_path)
    images.write_bytes(images.read_bytes()[:-20])  # truncated gzip stream
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load("fashion_mnist", input_shape=(28, 28, 1), data_dir=tmp_path)


# ---------------------------------------------------------------- cifar


def cifar_batch(n, label_key=b"labels", offset=0, classes=10):
    rng = np.random.default_rng(offset)
    return {b"batch_label": b"fake", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [(offset + i) % classes for i in range(n)], b"filenames": [b"x.png"] * n}


def write_pickle(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The published files reference numpy.core.multiarray._reconstruct (numpy 1 spelling), as this does.
    path.write_bytes(pickle.dumps(value, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar10(folder: Path, meta=True):
    batches = {f"data_batch_{i}": cifar_batch(3, offset=i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(2, offset=9)
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    if meta:
        write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return batches


def make_tar(tar_path: Path, folder: Path) -> None:
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def test_cifar10_from_batches_channel_last(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py")
    s = load("cifar10", input_shape=(32, 32, 3), num_classes=10, data_dir=tmp_path, validation="test")
    assert s.x_train.shape == (15, 32, 32, 3) and s.x_test.shape == (2, 32, 32, 3)
    assert s.x_train.dtype == np.uint8 and s.x_train.flags.c_contiguous
    row = batches["data_batch_2"][b"data"][1]  # 1024 red, 1024 green, 1024 blue values, row by row
    assert s.x_train[4, 5, 7, 2] == row[2 * 1024 + 5 * 32 + 7]
    assert list(s.y_train[:3]) == [1, 2, 3] and list(s.y_test) == [9, 0]
    assert s.class_names == [f"c{i}" for i in range(10)]
    assert {Path(f["path"]).name for f in s.identity["files"]} == {*builtin.CIFAR10_FILES, "batches.meta"}


def test_cifar10_from_the_archive_and_keras3_cache_layout(tmp_path, monkeypatch):
    source = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10(source, meta=False)
    make_tar(tmp_path / "cifar-10-python.tar.gz", source)
    s = load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path)
    assert s.x_train.shape == (15, 32, 32, 3) and s.class_names[0] == "airplane"
    assert [Path(f["path"]).name for f in s.identity["files"]] == ["cifar-10-python.tar.gz"]
    keras3 = tmp_path / "keras" / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py"
    write_cifar10(keras3)
    assert load("cifar10", input_shape=(32, 32, 3)).class_names[0] == "c0"


def test_cifar100_label_modes_from_the_archive(tmp_path):
    source = tmp_path / "src" / "cifar-100-python"
    for name, n in (("train", 6), ("test", 4)):
        batch = cifar_batch(n, b"fine_labels", classes=100)
        batch[b"coarse_labels"] = [i % 20 for i in range(n)]
        write_pickle(source / name, batch)
    write_pickle(source / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    make_tar(tmp_path / "data" / "cifar-100-python.tar.gz", source)
    fine = load("cifar100", input_shape=(32, 32, 3), num_classes=100, data_dir=tmp_path / "data")
    coarse = load("cifar100", input_shape=(32, 32, 3), num_classes=20, data_dir=tmp_path / "data",
                  cifar100_label_mode="coarse")
    assert len(fine.class_names) == 100 and fine.class_names[5] == "f5"
    assert coarse.class_names[:2] == ["k0", "k1"] and coarse.identity["label_mode"] == "coarse"
    assert np.array_equal(fine.x_train, coarse.x_train)


def test_cifar_pickles_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    write_pickle(tmp_path / "test_batch", {b"data": Evil()})
    with pytest.raises(DataError, match=r"test_batch.*refusing"):
        load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_corrupt_archive_and_batch(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz"):
        load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path)
    folder = tmp_path / "other" / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path / "other")


# ---------------------------------------------------------------- image folders


def write_image(path: Path, mode: str, size=(8, 8), value=100, fmt=None):
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value,) * len(mode)
    Image.new(mode, size, color).save(path, fmt)


def write_folder(root: Path, splits=("train", "test")):
    for split in splits:
        write_image(root / split / "cat" / "a.png", "RGB", value=10)
        write_image(root / split / "cat" / "b.png", "RGBA", size=(16, 12), value=20)  # resized, alpha dropped
        write_image(root / split / "cat" / "c.bmp", "RGB", value=30)
        write_image(root / split / "dog" / "d.jpg", "RGB", value=200)
        write_image(root / split / "dog" / "e.png", "L", value=210)  # grayscale converted to RGB
        write_image(root / split / "dog" / "f.gif", "L", value=220)
        (root / split / "dog" / "notes.txt").write_text("not an image")


def test_image_folder_classes_resize_and_channels(tmp_path):
    write_folder(tmp_path / "imgs")
    rgb = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), num_classes=2, validation="test")
    assert rgb.class_names == ["cat", "dog"] and rgb.x_train.shape == (6, 8, 8, 3) and rgb.x_train.dtype == np.uint8
    assert list(rgb.y_train) == [0, 0, 0, 1, 1, 1] and rgb.x_test.shape == (6, 8, 8, 3)
    assert np.all(rgb.x_train[0] == 10) and np.all(rgb.x_train[1] == 20) and np.all(rgb.x_train[4] == 210)
    assert abs(int(rgb.x_train[3].mean()) - 200) <= 2  # JPEG is lossy
    gray = load("directory", input_shape=(8, 8, 1), data_dir=tmp_path / "imgs")
    assert gray.x_train.shape == (6, 8, 8, 1) and np.all(gray.x_train[0] == 10) and np.all(gray.x_train[5] == 220)
    assert load("directory", input_shape=(4, 4), data_dir=tmp_path / "imgs").x_test.shape == (6, 4, 4)
    assert rgb.identity["dataset"] == "directory" and rgb.identity["files"][0]["images"] == 12


def test_image_folder_cache_is_written_and_reused(tmp_path, monkeypatch):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    cached = list((tmp_path / "cache").glob("images-*.npz"))
    assert len(cached) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folders, "decode_images", no_decoding)
    second = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    assert np.array_equal(first.x_train, second.x_train) and first.identity == second.identity
    with pytest.raises(AssertionError, match="decoded again"):  # another shape is another cache entry
        load("directory", input_shape=(8, 8, 1), root=str(tmp_path / "imgs"))


def test_damaged_cache_is_decoded_again(tmp_path):
    write_folder(tmp_path / "imgs")
    first = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    (cached,) = (tmp_path / "cache").glob("images-*.npz")
    cached.write_bytes(cached.read_bytes()[:50])
    assert np.array_equal(load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs")).x_test, first.x_test)
    assert cached.stat().st_size > 1000


def test_image_folder_without_cache_writes_nothing(tmp_path):
    write_folder(tmp_path / "imgs")
    load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), cache=False)
    assert not (tmp_path / "cache").exists()


def test_image_folder_val_subfolder_is_the_split(tmp_path):
    write_folder(tmp_path / "imgs", splits=("train", "test", "val"))
    s = load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"), validation="split")
    assert len(s.x_train) == 6 and len(s.x_val) == 6 and list(s.y_val) == [0, 0, 0, 1, 1, 1]


def test_image_folder_problems(tmp_path):
    write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"train/dog/broken\.jpg"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "imgs"))
    write_folder(tmp_path / "mismatch")
    write_image(tmp_path / "mismatch" / "test" / "bird" / "x.png", "RGB")
    with pytest.raises(DataError, match="bird"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path / "mismatch"))
    with pytest.raises(DataError, match="train/"):
        load("directory", input_shape=(8, 8, 3), root=str(tmp_path))
    with pytest.raises(DataError, match="1 or 3"):
        load("directory", input_shape=(8, 8, 4), root=str(tmp_path / "imgs"))


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


# ---------------------------------------------------------------- make_dataset and imports


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


def test_aligned_copies_only_when_needed():
    whole = np.arange(1000, dtype=np.uint8)
    view = whole[1:]  # 1 byte past an allocation: not 64-byte aligned
    assert view.ctypes.data % ALIGNMENT != 0
    copy = aligned(view)
    assert copy.ctypes.data % ALIGNMENT == 0 and np.array_equal(copy, view) and copy.flags.writeable
    assert aligned(copy) is copy
    frozen = np.frombuffer(bytes(128), dtype=np.uint8)  # read-only: DLPack cannot export it
    assert aligned(frozen).flags.writeable
    assert aligned(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_host_tensor_shares_memory_and_outlives_the_name():
    import gc

    import tensorflow as tf

    x = aligned(np.arange(64 * 3, dtype=np.uint8).reshape(64, 3))
    tensor = host_tensor(x)
    x[0, 0] = 200
    assert int(tensor[0, 0]) == 200  # the same memory
    expected = x.copy()
    del x
    gc.collect()
    assert np.array_equal(tensor.numpy(), expected) and "CPU" in tensor.device  # the tensor keeps it alive
    assert tf.reduce_sum(tf.cast(host_tensor(np.arange(5, dtype=np.int64)[1:]), tf.int32)) == 10  # unaligned view


def test_load_splits_returns_aligned_arrays(tmp_path):
    x = np.zeros((21, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(21) % 3, x_test=x[:5], y_test=np.arange(5) % 3)
    splits = data.load_splits(DataConfig(dataset="npz", root=str(tmp_path / "d.npz")), input_shape=(4, 4, 1),
                              num_classes=3, validation="split", validation_split=0.2, seed=0)
    arrays = [splits.x_train, splits.y_train, splits.x_val, splits.y_val, splits.x_test, splits.y_test]
    assert all(a.ctypes.data % ALIGNMENT == 0 and a.flags.c_contiguous for a in arrays)


def test_importing_data_does_not_import_tensorflow():
    code = "import cnnctl.data, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_unpickler_allows_numpy_arrays_only():
    blob = pickle.dumps({b"a": np.arange(3, dtype=np.uint8)})
    assert list(builtin._ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()[b"a"]) == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):
        builtin._ArrayUnpickler(io.BytesIO(pickle.dumps(print)), encoding="bytes").load()
