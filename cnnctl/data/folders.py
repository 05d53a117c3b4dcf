"""Image-folder datasets: train/<class>/*, test/<class>/* (and val/), decoded once and cached on disk
($CNNCTL_CACHE, default ~/.cache/cnnctl)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cnnctl.data.arrays import Splits, given_path, label_dtype
from cnnctl.errors import DataError
from cnnctl.files import atomic_path
from cnnctl.schema import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


DECODE_BATCH = 256


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
        stat = _stat(path)
        total += stat.st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest(), total


def _stat(path: Path) -> os.stat_result:
    """The image's stat; a DataError naming it when it cannot be read (a broken or looping link, ...)."""
    try:
        return path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            why = "a symbolic link loop"
        elif path.is_symlink() and error.errno == errno.ENOENT:
            why = f"a broken symbolic link (to {os.readlink(path)})"
        else:
            why = f"cannot read it: {error.strerror}"
        raise DataError(f"{path}: {why}") from None


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
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images)
    except OSError:
        pass


def decode_images(paths: list[Path], shape: tuple) -> np.ndarray:
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


def load_directory(data: DataConfig, shape: tuple, data_dir) -> Splits:
    """An image folder: train/<class>/*, test/<class>/*, and optionally val/<class>/*.

    Class names are the sorted folder names of train/. Images are converted to the input shape's
    channels and resized to its height and width. A val/ folder, if present, is the validation
    set for validation "split" instead of a held-out part of train/. Decoded arrays are cached as
    an .npz in $CNNCTL_CACHE (default ~/.cache/cnnctl) keyed by `_fingerprint`, unless data.cache
    is false.
    """
    root = given_path(data, data_dir, lambda p: (p / "train").is_dir(), "a folder with train/")
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
        images = decode_images(all_paths, decode_shape)
        if data.cache:
            _write_cache(cache, images)
    arrays, start = {}, 0
    for split, (paths, labels) in splits.items():
        arrays[split] = (images[start:start + len(paths)], np.asarray(labels, dtype=label_dtype(len(names))))
        start += len(paths)
    identity = {"dataset": "directory", "fingerprint": key,
                "fingerprint_of": "relative paths, sizes and mtimes of the images, and the decoded shape",
                "files": [{"path": str(root.absolute()), "bytes": total, "images": len(all_paths)}]}  # fmt: skip
    return Splits(*arrays["train"], *arrays.get("val", (None, None)), *arrays["test"], names, identity)
