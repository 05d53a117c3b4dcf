"""What every dataset becomes (`Splits`: uint8 images, integer labels) and the array-level steps:
npz files, synthetic data, shape fitting, the seeded validation split."""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnctl.errors import DataError
from cnnctl.schema import DataConfig


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


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(Path(path).absolute()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """`1 class`, `0 classes`, `60,000 images`: a number with its noun, for messages."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def given_path(data: DataConfig, data_dir, ok, what: str) -> Path:
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


def read_npz(path: Path) -> list[np.ndarray]:
    """x_train, y_train, x_test, y_test from an .npz file, without unpickling anything."""
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                has = ", ".join(npz.files) or "no arrays"
                raise DataError(f"{path}: no {', '.join(missing)} {'array' if len(missing) == 1 else 'arrays'} "
                                f"(it has {has})")
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
        elif array.dtype != np.uint8 or array.ndim < 2:
            raise DataError(f"{path}: {key} must be uint8 images (0-255) of shape (N, ...), "
                            f"got {array.dtype} {array.shape}")
        arrays[keys.index(key)] = array
    for split, x, y in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
        if len(x) != len(y):
            raise DataError(f"{path}: x_{split} has {counted(len(x), 'image')} but y_{split} has "
                            f"{counted(len(y), 'label')}")
        if len(x) == 0:
            raise DataError(f"{path}: the {split} split is empty (x_{split} and y_{split} hold no examples)")
    return arrays


def load_npz(data: DataConfig, data_dir) -> Splits:
    path = given_path(data, data_dir, Path.is_file, "an .npz file")
    x_train, y_train, x_test, y_test = read_npz(path)
    n = data.num_classes or (len(data.class_names) if data.class_names else None)
    n = n or int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    identity = {"dataset": "npz", "files": [file_record(path)]}
    return Splits(x_train, y_train, None, None, x_test, y_test, [str(i) for i in range(n)], identity)


def synthetic_splits(data: DataConfig, shape: tuple, num_classes: int | None, seed: int) -> Splits:
    """Seeded random images: a fixed random brightness pattern per class plus noise, so they can be learnt."""
    n = num_classes or data.num_classes
    if n is None:
        raise DataError("synthetic data needs a number of classes (data.num_classes or the model's outputs)")
    if data.num_classes and num_classes and data.num_classes != num_classes:
        raise DataError(f"data.num_classes is {data.num_classes} but the model has "
                        f"{counted(num_classes, 'output')}")
    rng = np.random.default_rng(seed)
    if len(shape) == 3:  # 4x4-pixel blocks: a small conv net picks them up within a few steps
        height, width, channels = shape
        blocks = rng.integers(32, 224, size=(n, -(-height // 4), -(-width // 4), channels), dtype=np.int16)
        templates = blocks.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width]
    else:
        templates = rng.integers(32, 224, size=(n, *shape), dtype=np.int16)

    def draw(count: int, stream: int):
        rng = np.random.default_rng([seed, stream])
        y = rng.integers(0, n, count).astype(label_dtype(n))
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


def label_dtype(n: int):
    return np.uint8 if n <= 256 else np.int32


def check_classes(data: DataConfig, raw: Splits, num_classes: int | None) -> int:
    """The number of classes; the labels, class names and model outputs must agree with it."""
    n = len(raw.class_names)
    if data.num_classes and data.num_classes != n and data.dataset != "npz":
        raise DataError(f"data.num_classes is {data.num_classes} but {data.dataset} has "
                        f"{counted(n, 'class', 'classes')}")
    if num_classes is not None and num_classes != n:
        raise DataError(f"the model has {counted(num_classes, 'output')} but {raw.identity['dataset']} has "
                        f"{counted(n, 'class', 'classes')}")
    for split, y in (("train", raw.y_train), ("test", raw.y_test), ("val", raw.y_val)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= n):
            raise DataError(f"{split} labels must be in 0..{n - 1} ({counted(n, 'class', 'classes')}), "
                            f"found {y.min()}..{y.max()}")
    if data.class_names is not None:
        if len(data.class_names) != n:
            raise DataError(f"data.class_names has {counted(len(data.class_names), 'name')} but there "
                            f"{'is' if n == 1 else 'are'} {counted(n, 'class', 'classes')}")
        raw.class_names = list(data.class_names)
    return n


def fit_shape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """A view of x shaped (N, *shape): adds or drops a channel axis of 1, or flattens; else DataError."""
    if x.shape[1:] == shape:
        return x
    squeeze = tuple(d for d in x.shape[1:] if d != 1) == tuple(d for d in shape if d != 1)
    flatten = len(shape) == 1 and int(np.prod(x.shape[1:])) == shape[0]
    if not (squeeze or flatten):
        raise DataError(f"the images have shape {list(x.shape[1:])} but model.input_shape is {list(shape)}")
    return x.reshape((len(x), *shape))


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Hold out a seeded random `fraction` of (x, y).

    Keras' validation_split takes the last fraction unshuffled, which is biased when the data is
    sorted by class; a seeded permutation avoids that. The count matches Keras (N - int(N * (1 - f))),
    and both parts keep their original order.
    """
    train, val = held_out(len(x), fraction, seed)
    return x[train], y[train], x[val], y[val]


def held_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices of n examples: a seeded random `fraction` held out (Keras' count)."""
    n_val = n - int(n * (1 - fraction))
    if n_val < 1 or n_val >= n:
        raise DataError(f"validation_split {fraction} of {counted(n, 'training example')} leaves an empty part")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
