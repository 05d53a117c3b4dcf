"""Datasets: `DataConfig` -> uint8 arrays (`Splits`) -> batched float `tf.data.Dataset`s.

Images stay uint8 in memory, (N, H, W, C) as the model's input_shape says; labels stay integer
class indices. Scaling to [0, 1] and one-hot labels are made per batch in `make_dataset`.
Built-in datasets are read from the files keras.datasets uses, found locally (see `search_places`);
Keras' own download is tried only when the host answers within seconds ($CNNCTL_OFFLINE=1: never).
Decoded image folders are cached on disk ($CNNCTL_CACHE, default ~/.cache/cnnctl). Every problem
is a `DataError` naming the file. TensorFlow is imported only inside the functions that need it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import re
import socket
import ssl
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NETWORK_TIMEOUT = 3.0  # seconds to reach a download host before giving up
DECODE_BATCH = 256

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")  # fmt: skip
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")


@dataclass(frozen=True)
class Builtin:
    """Where keras.datasets keeps a dataset: folders (relative to a search place) and file names."""

    layouts: tuple[tuple[str, tuple[str, ...]], ...]
    wanted: str  # the files to put in place, for error messages
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    host: str  # the download host keras.datasets uses


def _cifar_layouts(folder: str, files: tuple[str, ...], archive: str) -> tuple:
    # Keras 2 extracted to datasets/<folder>/, Keras 3 to datasets/<folder>-target/<folder>/.
    return (("", files), (folder, files), (f"{folder}-target/{folder}", files), ("", (archive,)))


BUILTINS = {
    "mnist": Builtin((("", ("mnist.npz",)),), "mnist.npz", (28, 28),
                     tuple(str(i) for i in range(10)), "storage.googleapis.com"),
    "fashion_mnist": Builtin((("", FASHION_FILES), ("fashion-mnist", FASHION_FILES)),
                             ", ".join(FASHION_FILES) + " (or a fashion-mnist/ folder of them)", (28, 28),
                             ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                              "Sneaker", "Bag", "Ankle boot"), "storage.googleapis.com"),
    "cifar10": Builtin(_cifar_layouts("cifar-10-batches-py", CIFAR10_FILES, "cifar-10-python.tar.gz"),
                       "cifar-10-batches-py/ (data_batch_1..5, test_batch) or cifar-10-python.tar.gz",
                       (32, 32, 3), ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"), "www.cs.toronto.edu"),
    "cifar100": Builtin(_cifar_layouts("cifar-100-python", CIFAR100_FILES, "cifar-100-python.tar.gz"),
                        "cifar-100-python/ (train, test) or cifar-100-python.tar.gz",
                        (32, 32, 3), (), "www.cs.toronto.edu"),
}  # fmt: skip


@dataclass
class Splits:
    """uint8 images (N, *input_shape) and integer labels (N,); x_val is None without validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    identity: dict  # JSON-able: where the data came from (files with sizes and sha256) and its sizes


# ---------------------------------------------------------------- public API


def load_splits(data: DataConfig, *, input_shape: list[int] | tuple, num_classes: int | None,
                validation: str, validation_split: float, seed: int,
                data_dir: str | Path | None = None, synthetic: bool = False) -> Splits:
    """Load the dataset `data` describes as uint8 images shaped `input_shape`, split for training.

    `num_classes` is the model's number of outputs. `synthetic` (the CLI's --smoke) replaces the
    dataset with seeded random data. validation: "none", "split" (a seeded random
    `validation_split` of the training set; an image folder's val/ if it has one) or "test".
    """
    shape = tuple(int(d) for d in input_shape)
    if synthetic or data.dataset == "synthetic":
        raw = _synthetic(data, shape, num_classes, seed)
    elif data.dataset == "directory":
        raw = _load_directory(data, shape, data_dir)
    elif data.dataset == "npz":
        raw = _load_npz_dataset(data, data_dir)
    else:
        raw = _load_builtin(data, data_dir)
    n = _check_classes(data, raw, num_classes)
    labels = _label_dtype(n)
    x_train, y_train = _fit_shape(raw.x_train, shape), raw.y_train.astype(labels, copy=False)
    x_test, y_test = _fit_shape(raw.x_test, shape), raw.y_test.astype(labels, copy=False)
    if validation == "none":
        x_val = y_val = None
    elif validation == "test":
        x_val, y_val = x_test, y_test
    elif validation == "split" and raw.x_val is not None:  # an image folder's val/
        x_val, y_val = _fit_shape(raw.x_val, shape), raw.y_val.astype(labels, copy=False)
    elif validation == "split":
        x_train, y_train, x_val, y_val = _split(x_train, y_train, validation_split, seed)
    else:
        raise DataError(f"validation must be none, split or test, got {validation!r}")
    identity = dict(raw.identity, train_examples=len(x_train), val_examples=0 if x_val is None else len(x_val),
                    test_examples=len(x_test), image_shape=list(shape), num_classes=n)  # fmt: skip
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, raw.class_names, identity)


def _batch_transform(num_classes: int, one_hot: bool):
    import tensorflow as tf

    def scale(images, labels):
        images = tf.cast(images, tf.float32) / 255.0
        labels = tf.one_hot(labels, num_classes) if one_hot else tf.cast(labels, tf.int32)
        return images, labels

    return scale


def _deterministic(dataset):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True  # same seed, same batches: runs must be reproducible
    return dataset.with_options(options)


def make_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool, shuffle: bool, seed: int,
                 shuffle_buffer: int | None = None, drop_remainder: bool = False):
    """Batches of (float32 images in [0, 1], int32 or one-hot labels) from uint8 arrays.

    The uint8 arrays go into the pipeline as they are; casting and one-hot encoding happen per batch.
    `shuffle_buffer` None means the whole set (a perfect shuffle); 0 or 1 means no shuffling.
    """
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    buffer = len(x) if shuffle_buffer is None else shuffle_buffer
    if shuffle and buffer > 1:
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(_batch_transform(num_classes, one_hot), num_parallel_calls=tf.data.AUTOTUNE)
    return _deterministic(dataset).prefetch(tf.data.AUTOTUNE)


def make_epoch_dataset(x, y, *, batch_size: int, num_classes: int, one_hot: bool, shuffle: bool, seed: int,
                       start_epoch: int = 0, skip_steps: int = 0, epochs: int | None = None):
    """Training batches, epoch after epoch, where epoch e is a permutation seeded by (seed, e).

    The order of any epoch depends only on the seed and the epoch number, never on how many
    epochs this process has run: a run resumed at epoch e, step k (`start_epoch`, `skip_steps`)
    sees exactly the batches an uninterrupted run would. Batches never straddle two epochs.
    `epochs` None repeats forever (use with fit's steps_per_epoch).
    """
    import tensorflow as tf

    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 arrays, got {x.dtype}")
    images, labels = tf.constant(x), tf.constant(y)
    count = len(x)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    last = start_epoch + epochs if epochs is not None else 2**62
    dataset = tf.data.Dataset.range(start_epoch, last).flat_map(epoch_batches).skip(skip_steps)
    transform = _batch_transform(num_classes, one_hot)
    dataset = dataset.map(lambda index: transform(tf.gather(images, index), tf.gather(labels, index)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return _deterministic(dataset).prefetch(tf.data.AUTOTUNE)


def search_places(dataset: str, data_dir=None, root=None) -> list[tuple[str, Path]]:
    """Where a built-in dataset's files are looked for, first hit wins: (label, folder) pairs."""
    places = [("--data-dir", data_dir), ("data.root", root), ("$CNNCTL_DATA", os.environ.get("CNNCTL_DATA"))]
    if os.environ.get("KERAS_HOME"):
        places.append(("$KERAS_HOME/datasets", Path(os.environ["KERAS_HOME"]) / "datasets"))
    else:
        places.append(("~/.keras/datasets", Path.home() / ".keras" / "datasets"))
    if dataset == "fashion_mnist":
        places.append(("Debian dataset-fashion-mnist", DEBIAN_FASHION_MNIST))
    found = []
    for label, place in places:
        if place:
            place = Path(place).expanduser()
            found.append((label, place.parent if place.is_file() else place))
    return found


def find_builtin_files(dataset: str, data_dir=None, root=None) -> list[Path]:
    """The files of the first complete copy of `dataset` in `search_places`; DataError if none."""
    places = search_places(dataset, data_dir, root)
    for _, place in places:
        for folder, names in BUILTINS[dataset].layouts:
            files = [place / folder / name for name in names]
            if all(f.is_file() for f in files):
                return files
    raise DataError(_not_found(dataset, places))


# ---------------------------------------------------------------- built-in datasets


def _not_found(dataset: str, places: list[tuple[str, Path]], why: str = "") -> str:
    cache = "$KERAS_HOME/datasets" if os.environ.get("KERAS_HOME") else "~/.keras/datasets"
    debian = " (or apt-get install dataset-fashion-mnist)" if dataset == "fashion_mnist" else ""
    searched = ", ".join(str(place) for _, place in places)
    return (f"{dataset}: data files not found. Put {BUILTINS[dataset].wanted} in one of: --data-dir (or "
            f"data.root), $CNNCTL_DATA, {cache}{debian} (searched: {searched}).{' ' + why if why else ''}")


def _locate_or_download(dataset: str, data_dir, root) -> list[Path]:
    try:
        return find_builtin_files(dataset, data_dir, root)
    except DataError:
        pass
    places = search_places(dataset, data_dir, root)
    if os.environ.get("CNNCTL_OFFLINE", "") not in ("", "0"):
        raise DataError(_not_found(dataset, places, "Downloads are off (CNNCTL_OFFLINE)."))
    host = BUILTINS[dataset].host
    if not _reachable(host, NETWORK_TIMEOUT):
        raise DataError(_not_found(dataset, places, f"No network to download it ({host} did not answer)."))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # Keras downloads with urllib and no timeout: a stall would hang forever
    try:
        import keras

        getattr(keras.datasets, dataset).load_data()  # downloads into the Keras cache, searched above
    except Exception as error:  # noqa: BLE001 - any download failure is reported the same way
        raise DataError(_not_found(dataset, places, f"Downloading it failed: {error}")) from None
    finally:
        socket.setdefaulttimeout(previous)
    return find_builtin_files(dataset, data_dir, root)


def _reachable(host: str, timeout: float) -> bool:
    """Does `host` complete a verified TLS handshake within `timeout`?

    TLS, not just TCP: some networks accept every connection and answer nothing. Runs in a
    thread because name lookups ignore socket timeouts.
    """
    result = []

    def connect():
        try:
            with socket.create_connection((host, 443), timeout=timeout) as sock:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    result.append(True)
        except OSError:  # includes ssl.SSLError and timeouts
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _load_builtin(data: DataConfig, data_dir) -> Splits:
    info = BUILTINS[data.dataset]
    files = _locate_or_download(data.dataset, data_dir, data.root)
    names = list(info.class_names)
    if data.dataset == "mnist":
        arrays = _read_npz(files[0])
    elif data.dataset == "fashion_mnist":
        arrays = [_read_idx(path, image=(i % 2 == 0)) for i, path in enumerate(files)]
    else:
        arrays, names, files = _read_cifar(data.dataset, files, data.cifar100_label_mode)
    x_train, y_train, x_test, y_test = arrays
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.shape[1:] != info.image_shape or len(x) != len(y):
            raise DataError(f"{files[0].parent}: expected {data.dataset} images of shape {info.image_shape} with "
                            f"one label each, got images {x.shape} and labels {y.shape}")  # fmt: skip
    identity = {"dataset": data.dataset, "files": [_file_record(p) for p in files]}
    if data.dataset == "cifar100":
        identity["label_mode"] = data.cifar100_label_mode
    return Splits(x_train, y_train, None, None, x_test, y_test, names, identity)


def _read_npz(path: Path) -> list[np.ndarray]:
    """x_train, y_train, x_test, y_test from an .npz file, without unpickling anything."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} array (it has {', '.join(npz.files)})")
            arrays = [npz[k] for k in keys]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    for key, array in zip(keys, arrays, strict=True):
        if key.startswith("y"):
            if array.ndim == 2 and array.shape[1] == 1:
                array = array.reshape(-1)  # Keras' CIFAR layout: (N, 1)
            if array.ndim != 1 or array.dtype.kind not in "iu":
                raise DataError(f"{path}: {key} must be integer class indices of shape (N,), "
                                f"got {array.dtype} {array.shape}")  # fmt: skip
        elif array.dtype != np.uint8:
            raise DataError(f"{path}: {key} must be uint8 images (0-255), got {array.dtype}")
        arrays[keys.index(key)] = array
    return arrays


def _read_idx(path: Path, *, image: bool) -> np.ndarray:
    """One gzipped IDX file (the original MNIST format): big-endian magic, sizes, then uint8 data."""
    ndim = 3 if image else 1
    expected_magic = 0x0803 if image else 0x0801
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            magic, *dims = struct.unpack(f">{1 + ndim}I", header)
            if magic != expected_magic:
                kind = "image" if image else "label"
                raise DataError(f"{path}: not an IDX {kind} file (magic {magic:#010x}, expected "
                                f"{expected_magic:#010x})")  # fmt: skip
            if dims[0] > 10_000_000 or (image and tuple(dims[1:]) != (28, 28)):
                raise DataError(f"{path}: unexpected IDX sizes {dims}")
            out = np.empty(dims, dtype=np.uint8)
            got = f.readinto(memoryview(out.reshape(-1)))
            extra = f.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    if got != out.size or extra:
        raise DataError(f"{path}: the header announces {out.size} bytes of data, the file holds "
                        f"{got if got != out.size else 'more'}")  # fmt: skip
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: a tampered file cannot run code."""

    allowed = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # avoids numpy 2's numpy.core warning
        return getattr(np, name)


def _unpickle(blob: bytes, where: str) -> dict:
    try:
        value = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise DataError(f"{where}: not a readable CIFAR pickle ({error})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a dict, got {type(value).__name__}")
    return value


def _cifar_blobs(files: list[Path], wanted: tuple[str, ...], meta: str) -> dict[str, tuple[str, bytes]]:
    """name -> (where, bytes) for the batch files and, if present, the meta file."""
    if not files[0].name.endswith(".tar.gz"):
        paths = [*files, files[0].parent / meta]
        return {p.name: (str(p), p.read_bytes()) for p in paths if p.is_file()}
    blobs = {}
    try:
        with tarfile.open(files[0], "r|gz") as tar:  # streamed: nothing is extracted to disk
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in (*wanted, meta) and name not in blobs:
                    blobs[name] = (f"{files[0]}:{member.name}", tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"{files[0]}: not a readable .tar.gz archive ({error})") from None
    missing = [n for n in wanted if n not in blobs]
    if missing:
        raise DataError(f"{files[0]}: the archive has no {', '.join(missing)}")
    return blobs


def _read_cifar(dataset: str, files: list[Path], label_mode: str):
    """CIFAR python pickles: N x 3072 uint8 rows in channel-first order, labels as lists."""
    wanted = CIFAR10_FILES if dataset == "cifar10" else CIFAR100_FILES
    meta = "batches.meta" if dataset == "cifar10" else "meta"
    label_key = b"labels" if dataset == "cifar10" else f"{label_mode}_labels".encode()
    blobs = _cifar_blobs(files, wanted, meta)
    parts = []
    for name in wanted:
        where, blob = blobs[name]
        batch = _unpickle(blob, where)
        x, y = batch.get(b"data"), batch.get(label_key)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
            raise DataError(f"{where}: b'data' must be a uint8 array of shape (N, 3072)")
        if y is None or len(y) != len(x):
            raise DataError(f"{where}: expected {len(x)} {label_key!r}, got {None if y is None else len(y)}")
        parts.append((x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(y, dtype=np.int64)))
    arrays = []
    for group in (parts[:-1], parts[-1:]):  # the training batches, then the test batch
        images = np.empty((sum(len(x) for x, _ in group), 32, 32, 3), dtype=np.uint8)
        arrays += [np.concatenate([x for x, _ in group], out=images), np.concatenate([y for _, y in group])]
    names = list(BUILTINS[dataset].class_names)
    if meta in blobs:
        meta_key = b"label_names" if dataset == "cifar10" else f"{label_mode}_label_names".encode()
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(blobs[meta][1], meta)[meta_key]]
        if not files[0].name.endswith(".tar.gz"):
            files = [*files, files[0].parent / meta]
    if not names:
        names = [str(i) for i in range(20 if label_mode == "coarse" else 100)]
    return arrays, names, files


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- npz and synthetic


def _given_path(data: DataConfig, data_dir, ok, what: str) -> Path:
    """data_dir (the CLI's --data-dir) wins over data.root; a relative root is also tried under data_dir."""
    candidates = [Path(p).expanduser() for p in (data_dir, data.root) if p]
    if data_dir and data.root:
        candidates.insert(1, Path(data_dir).expanduser() / data.root)
    for path in candidates:
        if ok(path):
            return path
    if not candidates:
        raise DataError(f"dataset {data.dataset} needs data.root (or --data-dir)")
    raise DataError(f"{data.dataset}: {' or '.join(str(p) for p in candidates)}: not {what}")


def _load_npz_dataset(data: DataConfig, data_dir) -> Splits:
    path = _given_path(data, data_dir, Path.is_file, "an .npz file")
    x_train, y_train, x_test, y_test = _read_npz(path)
    n = data.num_classes or (len(data.class_names) if data.class_names else None)
    n = n or int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    identity = {"dataset": "npz", "files": [_file_record(path)]}
    return Splits(x_train, y_train, None, None, x_test, y_test, [str(i) for i in range(n)], identity)


def _synthetic(data: DataConfig, shape: tuple, num_classes: int | None, seed: int) -> Splits:
    """Seeded random images: a fixed random brightness pattern per class plus noise, so they can be learnt."""
    n = num_classes or data.num_classes
    if n is None:
        raise DataError("synthetic data needs a number of classes (data.num_classes or the model's outputs)")
    if data.num_classes and num_classes and data.num_classes != num_classes:
        raise DataError(f"data.num_classes is {data.num_classes} but the model has {num_classes} outputs")
    rng = np.random.default_rng(seed)
    if len(shape) == 3:  # 4x4-pixel blocks: a small conv net picks them up within a few steps
        height, width, channels = shape
        blocks = rng.integers(32, 224, size=(n, -(-height // 4), -(-width // 4), channels), dtype=np.int16)
        templates = blocks.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width]
    else:
        templates = rng.integers(32, 224, size=(n, *shape), dtype=np.int16)

    def draw(count: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        y = rng.integers(0, n, count).astype(_label_dtype(n))
        x = np.empty((count, *shape), dtype=np.uint8)
        for start in range(0, count, 4096):  # bounded temporary memory for large sizes
            part = slice(start, start + 4096)
            noise = rng.integers(-48, 49, size=x[part].shape, dtype=np.int16)
            x[part] = np.clip(templates[y[part]] + noise, 0, 255)
        return x, y

    x_train, y_train = draw(data.synthetic.train_examples, 1)
    x_test, y_test = draw(data.synthetic.test_examples, 2)
    identity = {"dataset": "synthetic", "seed": seed, "files": []}
    return Splits(x_train, y_train, None, None, x_test, y_test, [str(i) for i in range(n)], identity)


# ---------------------------------------------------------------- image folders


def _list_images(folder: Path, class_names: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """(class names, image paths, labels) of folder/<class>/**; class_names fixes the classes."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is not None and found != class_names:
        raise DataError(f"{folder}: class folders {found} differ from those of train/: {class_names}")
    paths, labels = [], []
    for label, name in enumerate(found):
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_SUFFIXES) and not filename.startswith("."):
                    paths.append(Path(dirpath, filename))
                    labels.append(label)
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
    return found, paths, labels


def _fingerprint(root: Path, paths: list[Path], shape: tuple) -> tuple[str, int]:
    """sha256 of the relative paths, sizes and mtimes (not contents: hashing every image is slow)."""
    digest = hashlib.sha256(json.dumps({"version": 1, "root": str(root.resolve()), "shape": shape}).encode())
    total = 0
    for path in paths:
        stat = path.stat()
        total += stat.st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest(), total


def _cache_dir() -> Path:
    if os.environ.get("CNNCTL_CACHE"):
        return Path(os.environ["CNNCTL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnctl"


def _read_cache(path: Path, counts: list[int], shape: tuple) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None  # a damaged cache entry is decoded again and overwritten
    return images if images.dtype == np.uint8 and images.shape == (sum(counts), *shape) else None


def _write_cache(path: Path, images: np.ndarray) -> None:
    """Atomically (temporary file, then rename); a cache that cannot be written is simply skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def _decode_images(paths: list[Path], shape: tuple) -> np.ndarray:
    """Decode, convert to `shape`'s channels and resize to its height and width, in parallel."""
    import tensorflow as tf

    height, width, channels = shape

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False)
        if channels == 1:
            image = tf.cast(tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))), tf.uint8)
        size = tf.shape(image)[:2]
        same = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
        return tf.reshape(tf.cond(same, lambda: image, lambda: resize(image)), shape)

    def resize(image):  # only for images of another size: same-size images keep their exact pixels
        resized = tf.round(tf.image.resize(image, [height, width]))
        return tf.cast(tf.clip_by_value(resized, 0, 255), tf.uint8)

    spec = tf.TensorSpec(shape, tf.uint8)
    batches = (tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).batch(DECODE_BATCH)
               .map(lambda batch: tf.map_fn(decode, batch, fn_output_signature=spec),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(2))  # fmt: skip
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    iterator = iter(batches)
    for start in range(0, len(paths), DECODE_BATCH):
        try:
            out[start:start + DECODE_BATCH] = next(iterator).numpy()
        except tf.errors.OpError:
            _raise_bad_image(paths[start:start + DECODE_BATCH], decode)
    return out


def _raise_bad_image(paths: list[Path], decode) -> None:
    """Find which image of a failed batch cannot be decoded (TensorFlow's message does not say)."""
    import tensorflow as tf

    for path in paths:
        try:
            decode(tf.constant(str(path)))
        except tf.errors.OpError as error:
            message = re.sub(r"\{\{.*?\}\}\s*", "", error.message).strip()
            raise DataError(f"{path}: cannot read image ({message})") from None
    raise DataError(f"{paths[0].parent}: cannot decode a batch of images starting at {paths[0]}")


def _load_directory(data: DataConfig, shape: tuple, data_dir) -> Splits:
    """An image folder: train/<class>/*, test/<class>/*, and optionally val/<class>/*.

    Class names are the sorted folder names of train/. Images are converted to the input shape's
    channels and resized to its height and width. A val/ folder, if present, is the validation
    set for validation "split" instead of a held-out part of train/. Decoded arrays are cached as
    an .npz in $CNNCTL_CACHE (default ~/.cache/cnnctl) keyed by `_fingerprint`, unless data.cache
    is false.
    """
    root = _given_path(data, data_dir, lambda p: (p / "train").is_dir(), "a folder with train/")
    if not (root / "test").is_dir():
        raise DataError(f"{root}: an image folder needs train/<class>/ and test/<class>/ folders")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise DataError(f"image folders need model.input_shape [H, W, 1 or 3] or [H, W], got {list(shape)}")
    decode_shape = shape if len(shape) == 3 else (*shape, 1)
    names, paths, labels = _list_images(root / "train")
    splits = {"train": (paths, labels)}
    for split in ("test", "val"):
        if split == "test" or (root / split).is_dir():
            splits[split] = _list_images(root / split, names)[1:]
    all_paths = [p for paths, _ in splits.values() for p in paths]
    counts = [len(paths) for paths, _ in splits.values()]
    key, total = _fingerprint(root, all_paths, decode_shape)
    cache = _cache_dir() / f"images-{key[:32]}.npz"
    images = _read_cache(cache, counts, decode_shape) if data.cache else None
    if images is None:
        images = _decode_images(all_paths, decode_shape)
        if data.cache:
            _write_cache(cache, images)
    arrays, start = {}, 0
    for split, (paths, labels) in splits.items():
        arrays[split] = (images[start:start + len(paths)], np.asarray(labels, dtype=_label_dtype(len(names))))
        start += len(paths)
    identity = {"dataset": "directory", "fingerprint": key,
                "fingerprint_of": "relative paths, sizes and mtimes of the images, and the decoded shape",
                "files": [{"path": str(root), "bytes": total, "images": len(all_paths)}]}  # fmt: skip
    return Splits(*arrays["train"], *arrays.get("val", (None, None)), *arrays["test"], names, identity)


# ---------------------------------------------------------------- checks and the validation split


def _label_dtype(n: int):
    return np.uint8 if n <= 256 else np.int32


def _check_classes(data: DataConfig, raw: Splits, num_classes: int | None) -> int:
    """The number of classes; the labels, class names and model outputs must agree with it."""
    n = len(raw.class_names)
    if data.num_classes and data.num_classes != n and data.dataset != "npz":
        raise DataError(f"data.num_classes is {data.num_classes} but {data.dataset} has {n} classes")
    if num_classes is not None and num_classes != n:
        raise DataError(f"the model has {num_classes} outputs but {raw.identity['dataset']} has {n} classes")
    for split, y in (("train", raw.y_train), ("test", raw.y_test), ("val", raw.y_val)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= n):
            raise DataError(f"{split} labels must be in 0..{n - 1} ({n} classes), found {y.min()}..{y.max()}")
    if data.class_names is not None:
        if len(data.class_names) != n:
            raise DataError(f"data.class_names has {len(data.class_names)} names but there are {n} classes")
        raw.class_names = list(data.class_names)
    return n


def _fit_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """A view of x shaped (N, *shape): adds or drops a channel axis of 1, or flattens; else DataError."""
    if x.shape[1:] == shape:
        return x
    squeeze = tuple(d for d in x.shape[1:] if d != 1) == tuple(d for d in shape if d != 1)
    flatten = len(shape) == 1 and int(np.prod(x.shape[1:])) == shape[0]
    if not (squeeze or flatten):
        raise DataError(f"the images have shape {list(x.shape[1:])} but model.input_shape is {list(shape)}")
    return x.reshape((len(x), *shape))


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Hold out a seeded random `fraction` of (x, y).

    Keras' validation_split takes the last fraction unshuffled, which is biased when the data is
    sorted by class; a seeded permutation avoids that. The count matches Keras (N - int(N * (1 - f))),
    and both parts keep their original order.
    """
    n_val = len(x) - int(len(x) * (1 - fraction))
    if n_val < 1 or n_val >= len(x):
        raise DataError(f"validation_split {fraction} of {len(x)} training examples leaves an empty part")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]
