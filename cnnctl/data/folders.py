"""Image datasets (`directory`, `csv`): listed by images.py, decoded by decode.py once, then read from
a memory-mapped cache, so resident memory does not grow with the number of images.

The cache holds one uncompressed uint8 .npy per split, plus a .json beside it naming the files that
could not be read. Both are keyed by the split's files (paths, sizes, mtimes), the input shape and
the resize policy, in $CNNCTL_CACHE (default ~/.cache/cnnctl). A decode is written to a temporary
file renamed into place when complete, the .json last: an interrupted decode leaves nothing a later
run would trust, and its temporary file is removed by the next run once its process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import cnnctl.data.decode as decode
import cnnctl.data.images as images
from cnnctl.data.arrays import Splits, counted, label_dtype
from cnnctl.errors import DataError
from cnnctl.files import write_json
from cnnctl.schema import DataConfig

CACHE_VERSION = 2
MAX_LISTED = 10  # unreadable files named in the error; `cnnctl data` lists them all


def cache_dir() -> Path:
    if os.environ.get("CNNCTL_CACHE"):
        return Path(os.environ["CNNCTL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnctl"


def cache_file(key: str) -> Path:
    """The cache's .npy of a split whose `fingerprint` is `key` (its record of bad files: .json beside it)."""
    return cache_dir() / f"images-{key[:32]}.npy"


def _stat(path: Path) -> os.stat_result | str:
    """The image's stat, or why it cannot be read (a broken or looping link, a missing file, ...)."""
    try:
        return path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        if path.is_symlink() and error.errno == errno.ENOENT:
            return f"a broken symbolic link (to {os.readlink(path)})"
        return f"cannot read it: {error.strerror}"


def fingerprint(paths: list[Path], shape: tuple, data: DataConfig) -> tuple[str, int, dict[int, str]]:
    """(sha256 of the paths, sizes and mtimes with the decode settings, bytes in all, {index: stat problem})."""
    settings = {"version": CACHE_VERSION, "shape": list(shape), "resize": data.resize,
                "max_image_pixels": data.max_image_pixels}
    digest = hashlib.sha256(json.dumps(settings).encode())
    total, problems = 0, {}
    for i, path in enumerate(paths):
        stat = _stat(path)
        if isinstance(stat, str):
            problems[i] = stat
            digest.update(f"{path.absolute()}\0missing\n".encode())
            continue
        total += stat.st_size
        digest.update(f"{path.absolute()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest(), total, problems


def _read_cache(npy: Path, count: int, shape: tuple) -> tuple[np.ndarray, dict[int, str]] | None:
    """(memory-mapped images, {index: reason} of unreadable files) of a complete cache entry, else None."""
    try:
        meta = json.loads(npy.with_suffix(".json").read_text())
        bad = {int(k): str(v) for k, v in meta["bad"].items()}
        array = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: decoded again and replaced
    if meta.get("version") != CACHE_VERSION or array.dtype != np.uint8 or array.shape != (count - len(bad), *shape):
        return None
    return array, bad


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of decodes whose process is gone (killed): never trusted, so removed."""
    for leftover in folder.glob(".images-*.tmp"):
        try:
            pid = int(leftover.name.split(".")[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue


def _decode(paths: list[Path], shape: tuple, data: DataConfig, npy: Path | None, problems: dict[int, str],
            progress, done: int, total: int) -> tuple[np.ndarray, dict[int, str]]:
    """Decode into a .npy at `npy` (the cache) or, without a cache, into an unlinked temporary file."""
    folder = npy.parent if npy is not None else Path(tempfile.gettempdir())
    tmp = folder / f".images-{os.urandom(6).hex()}.{os.getpid()}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)  # (a $CNNCTL_CACHE that cannot be made is a DataError too)
        if npy is not None:
            _remove_leftovers(folder)
        with open(tmp, "wb") as handle:
            handle.write(decode.npy_header((len(paths), *shape)))
            readable = [p for i, p in enumerate(paths) if i not in problems]
            where = [i for i in range(len(paths)) if i not in problems]
            bad = {where[i]: reason for i, reason in
                   decode.decode_into(handle, readable, shape, data.resize, data.max_image_pixels, progress,
                                      done, total).items()}
            if problems and progress is not None:  # decode_into counted only the files it was given
                progress(done + len(paths), total)
            bad.update(problems)
            handle.seek(0)
            handle.write(decode.npy_header((len(paths) - len(bad), *shape)))
        if npy is None:
            array = np.load(tmp, mmap_mode="r")  # the map keeps the unlinked file's data
            return array, dict(sorted(bad.items()))
        os.replace(tmp, npy)
        write_json(npy.with_suffix(".json"), {"version": CACHE_VERSION, "count": len(paths),
                                              "bad": {str(k): v for k, v in sorted(bad.items())}})
        return np.load(npy, mmap_mode="r"), dict(sorted(bad.items()))
    except OSError as error:
        raise DataError(f"{error.filename or tmp}: cannot write the decoded images ({error.strerror})",
                        hint="set $CNNCTL_CACHE to a folder with room for them (about "
                             f"{len(paths) * int(np.prod(shape)) / 1e9:.1f} GB)") from None
    finally:
        with contextlib.suppress(OSError):  # (none was made when the folder could not be)
            tmp.unlink(missing_ok=True)


def decoded(files: images.ImageFiles, parts: list[str], shape: tuple, data: DataConfig,
            progress: Callable[[int, int], None] | None = None) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
    """{split: (uint8 images of the readable files, {index: why unreadable})}, from the cache or decoded."""
    keys = {part: fingerprint(files.paths[part], shape, data) for part in parts}
    out, missing = {}, []
    for part in parts:
        npy = cache_file(keys[part][0])
        cached = _read_cache(npy, len(files.paths[part]), shape) if data.cache else None
        if cached is None:
            missing.append(part)
        else:
            out[part] = cached
    total, done = sum(len(files.paths[p]) for p in missing), 0
    for part in missing:
        npy = cache_file(keys[part][0]) if data.cache else None
        out[part] = _decode(files.paths[part], shape, data, npy, keys[part][2], progress, done, total)
        done += len(files.paths[part])
    return out


def bad_files_error(files: images.ImageFiles, bad: dict[str, dict[int, str]]) -> DataError:
    listed = [(files.paths[part][i], reason) for part in bad for i, reason in bad[part].items()]
    shown = "; ".join(f"{path}: {reason}" for path, reason in listed[:MAX_LISTED])
    more = f"; and {len(listed) - MAX_LISTED:,} more" if len(listed) > MAX_LISTED else ""
    return DataError(f"{files.source}: {counted(len(listed), 'image')} cannot be read: {shown}{more}",
                     hint="remove or replace them, or set data.skip_bad_files: true to train without them "
                          "(`cnnctl data CONFIG` lists them all)")


def load_images(data: DataConfig, shape: tuple, data_dir, *, validation: str, validation_split: float, seed: int,
                progress: Callable[[int, int], None] | None = None) -> Splits:
    """An image dataset as memory-mapped uint8 arrays: train, test and (for validation "split") val.

    Validation "split" uses val/ (or data.split's val part) when there is one, else holds out
    `validation_split` of train with the seeded choice array datasets get.
    """
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise DataError(f"image datasets need model.input_shape [H, W, 1 or 3] or [H, W], got {list(shape)}")
    decode_shape = shape if len(shape) == 3 else (*shape, 1)
    files = images.list_files(data, data_dir)
    digest = files.digest()  # of the listing as split on disk or by data.split: the same for every command
    if validation == "split" and "val" not in files.paths:
        files = images.hold_out_validation(files, validation_split, seed)
    elif validation != "split" and "val" in files.paths and files.split is not None:
        files = images.merge_validation(files)  # no validation: data.split's val part is trained on
    parts = ["train", *(["val"] if validation == "split" else []), "test"]
    arrays = decoded(files, parts, decode_shape, data, progress)
    bad = {part: arrays[part][1] for part in parts if arrays[part][1]}
    if bad and not data.skip_bad_files:
        raise bad_files_error(files, bad)
    for part in bad:
        if len(bad[part]) == len(files.paths[part]):  # skipping them all would leave nothing to train or test on
            raise DataError(f"{files.source}: none of the {counted(len(bad[part]), 'image')} of the {part} split "
                            f"can be read, e.g. {files.paths[part][0]}: {bad[part][0]}")
    labels = {}
    for part in parts:
        keep = np.ones(len(files.paths[part]), dtype=bool)
        keep[list(arrays[part][1])] = False
        labels[part] = files.labels[part][keep].astype(label_dtype(len(files.class_names)))
    split = lambda part: (arrays[part][0], labels[part]) if part in parts else (None, None)  # noqa: E731
    return Splits(*split("train"), *split("val"), *split("test"), files.class_names,
                  identity(files, bad, digest, data))


def identity(files: images.ImageFiles, bad: dict, digest: str, data: DataConfig) -> dict:
    """What the run records of an image dataset: where, how many, which split, what was skipped."""
    listed = [p for part in files.paths for p in files.paths[part]]
    total = sum(s.st_size for s in map(_stat, listed) if not isinstance(s, str))
    skipped = [{"split": part, "path": str(files.paths[part][i].absolute()), "reason": reason}  # as files[].path
               for part in bad for i, reason in bad[part].items()]
    return {"dataset": data.dataset, "layout": images.LAYOUTS[files.layout],
            "files": [{"path": str(files.source.absolute()), "bytes": total, "images": len(listed)}],
            "split": files.split.model_dump() if files.split else None, "split_digest": digest,
            "resize": data.resize, "skipped": len(skipped), "skipped_files": skipped[:100],
            "notes": files.notes}
