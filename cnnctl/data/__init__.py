"""Datasets: `DataConfig` -> uint8 arrays (`Splits`) -> batched float `tf.data.Dataset`s.

Images stay uint8 in memory, (N, H, W, C) as the model's input_shape says; labels stay integer
class indices. Scaling to [0, 1] and one-hot labels are made per batch in `make_dataset`, which
reads the (64-byte aligned) arrays in place: no copy of the images is made for TensorFlow.
Built-in datasets are read from the files keras.datasets uses, found locally (see `search_places`);
Keras' own download is tried only when the host answers within seconds ($CNNCTL_OFFLINE=1: never).
Decoded image folders are cached on disk ($CNNCTL_CACHE, default ~/.cache/cnnctl). Every problem
is a `DataError` naming the file. TensorFlow is imported only inside the functions that need it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnctl.data.arrays import Splits, check_classes, fit_shape, label_dtype, load_npz, split, synthetic_splits
from cnnctl.data.builtin import BUILTINS, find_builtin_files, load_builtin, locate_or_check_download, search_places
from cnnctl.data.folders import load_images
from cnnctl.data.images import IMAGE_SUFFIXES
from cnnctl.data.memory import aligned
from cnnctl.data.pipeline import make_dataset, make_epoch_dataset
from cnnctl.errors import DataError
from cnnctl.schema import DataConfig

__all__ = ["BUILTINS", "IMAGE_SUFFIXES", "Splits", "check_available", "find_builtin_files", "load_splits", "make_dataset",
           "make_epoch_dataset", "search_places"]


def load_splits(data: DataConfig, *, input_shape: list[int] | tuple, num_classes: int | None,
                validation: str, validation_split: float, seed: int,
                data_dir: str | Path | None = None, synthetic: bool = False, progress=None) -> Splits:
    """Load the dataset `data` describes as uint8 images shaped `input_shape`, split for training.

    `num_classes` is the model's number of outputs. `synthetic` (the CLI's --smoke) replaces the
    dataset with seeded random data. validation: "none", "split" (a seeded random
    `validation_split` of the training set; an image dataset's val/ or data.split part if it has one)
    or "test". Image datasets are memory-mapped from their decode cache; `progress(done, total)` is
    called while they are decoded.
    """
    shape = tuple(int(d) for d in input_shape)
    if synthetic or data.dataset == "synthetic":
        raw = synthetic_splits(data, shape, num_classes, seed)
    elif data.dataset in ("directory", "csv"):
        raw = load_images(data, shape, data_dir, validation=validation, validation_split=validation_split,
                          seed=seed, progress=progress)
    elif data.dataset == "npz":
        raw = load_npz(data, data_dir)
    else:
        raw = load_builtin(data, data_dir)
    n = check_classes(data, raw, num_classes)
    labels = label_dtype(n)
    x_train, y_train = fit_shape(raw.x_train, shape), raw.y_train.astype(labels, copy=False)
    x_test, y_test = fit_shape(raw.x_test, shape), raw.y_test.astype(labels, copy=False)
    if validation == "none":
        x_val = y_val = None
    elif validation == "test":
        x_val, y_val = x_test, y_test
    elif validation == "split" and raw.x_val is not None:  # an image folder's val/
        x_val, y_val = fit_shape(raw.x_val, shape), raw.y_val.astype(labels, copy=False)
    elif validation == "split":
        x_train, y_train, x_val, y_val = split(x_train, y_train, validation_split, seed)
    else:
        raise DataError(f"validation must be none, split or test, got {validation!r}")
    # 64-byte aligned, so the pipelines read these arrays in place (see memory.py); a no-op when they are,
    # and memory maps stay maps (their pipelines copy batches out of them)
    x_train, y_train, x_test, y_test = (_in_place(a) for a in (x_train, y_train, x_test, y_test))
    if validation == "test":
        x_val, y_val = x_test, y_test
    elif x_val is not None:
        x_val, y_val = _in_place(x_val), _in_place(y_val)
    identity = dict(raw.identity, train_examples=len(x_train), val_examples=0 if x_val is None else len(x_val),
                    test_examples=len(x_test), image_shape=list(shape), num_classes=n,
                    classes=_class_counts(raw.class_names, {"train": y_train, "val": None if validation == "test" else y_val,
                                                            "test": y_test}))  # fmt: skip
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, raw.class_names, identity)


def _class_counts(names: list[str], labels: dict) -> dict[str, dict[str, int]]:
    """{class name: {split: images}} for the manifest."""
    counts = {part: np.bincount(np.asarray(y, dtype=np.int64), minlength=len(names))
              for part, y in labels.items() if y is not None}
    return {name: {part: int(c[i]) for part, c in counts.items()} for i, name in enumerate(names)}


def _in_place(array: np.ndarray) -> np.ndarray:
    return array if isinstance(array, np.memmap) else aligned(array)


def check_available(data: DataConfig, data_dir: str | Path | None = None) -> None:
    """Fail fast (DataError) when a built-in dataset is neither on disk nor downloadable.

    Cheap and TensorFlow-free, so the CLI can say so before starting TensorFlow.
    """
    if data.dataset in BUILTINS:
        locate_or_check_download(data.dataset, data_dir, data.root)
