"""cnnctl.data.builtin: MNIST, Fashion-MNIST and CIFAR from tiny files made here in the layouts Keras
uses, where they are searched for, what happens offline, plus the real files if present."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASETS, load, write_mnist

from cnnctl import data
from cnnctl.data import builtin
from cnnctl.errors import DataError

DEBIAN = builtin.DEBIAN_FASHION_MNIST  # the real one: the `isolated` fixture replaces the module constant

pytestmark = pytest.mark.usefixtures("isolated")


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


def test_unpickler_allows_numpy_arrays_only():
    blob = pickle.dumps({b"a": np.arange(3, dtype=np.uint8)})
    assert list(builtin._ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()[b"a"]) == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):
        builtin._ArrayUnpickler(io.BytesIO(pickle.dumps(print)), encoding="bytes").load()


def test_a_cifar_batch_with_fewer_labels_than_images_says_so(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = cifar_batch(3, offset=2)
    batch[b"labels"] = batch[b"labels"][:1]
    write_pickle(folder / "data_batch_2", batch)
    with pytest.raises(DataError) as info:  # it said "expected 3 b'labels', got 1"
        load("cifar10", input_shape=(32, 32, 3), data_dir=tmp_path)
    assert str(info.value) == f"{folder / 'data_batch_2'}: b'data' holds 3 images but b'labels' holds 1 label"
